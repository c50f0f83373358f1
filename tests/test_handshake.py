"""Setting up and tearing down: round trips, ports in use, clients that break the handshake or
stall, XenStore that stalls, resources that run out, peer domains that are destroyed.

The hostile clients run in a process of their own (:func:`trio_vchan.testing.hostile_peer`),
through the backend.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import pytest
import trio
import trio.testing

import trio_vchan
from trio_vchan import Backend, PeerGoneError, VchanStream
from trio_vchan._advertisement import MemoryAdvertisements
from trio_vchan._backend import ChannelStatus, EventChannel, EventChannels, GrantMemory, Share
from trio_vchan._handshake import ServerPort, connect_endpoint, vchan_path
from trio_vchan._layout import RingOrders
from trio_vchan._session import CHORE_TIME
from trio_vchan._xenstore import XenStoreClient
from trio_vchan._xs_wire import Access, Permission
from trio_vchan.sim import SimulatedHost
from trio_vchan.testing import HostilePeer, hostile_peer

SERVER, CLIENT, OTHER = 1, 2, 4
STEP: Final = 10.0  # a step that takes longer than this hung


async def one_round_trip(server: VchanStream, client: VchanStream) -> None:
    await client.send_all(b"?")
    assert await server.receive_some() == b"?"
    await server.send_all(b"!")
    assert await client.receive_some() == b"!"


@asynccontextmanager
async def backends(sim: SimulatedHost, *domids: int) -> AsyncIterator[list[Backend]]:
    made = [sim.backend(d) for d in domids]
    try:
        yield made
    finally:
        for backend in made:
            backend.close()


async def accept_in_background(
    nursery: trio.Nursery, listener: trio_vchan.VchanListener
) -> trio.MemoryReceiveChannel[VchanStream]:
    send, receive = trio.open_memory_channel[VchanStream](100)

    async def accept_forever() -> None:
        async with send:
            while True:
                await send.send(await listener.accept())

    nursery.start_soon(accept_forever)
    return receive


# -- round trips ----------------------------------------------------------------------------------


async def connect_once(client: Backend, accepted: trio.MemoryReceiveChannel[VchanStream]) -> None:
    """Connect to SERVER's port "count", make one round trip, close, and let the listener
    advertise afresh."""
    with trio.fail_after(STEP):
        async with (
            trio_vchan.connect(SERVER, "count", backend=client) as stream,
            await accepted.receive() as served,
        ):
            await one_round_trip(served, stream)
        await trio.testing.wait_all_tasks_blocked()


def of_domain(counted: Counter[tuple[int, str]], domid: int) -> Counter[str]:
    """The counts of ``domid``'s requests, by operation."""
    return Counter({op: n for (d, op), n in counted.items() if d == domid})


async def test_a_connection_costs_few_xenstore_requests(sim: SimulatedHost) -> None:
    """Per connection, the server publishes (4) and withdraws (1); a client that finds the
    advertisement reads it in a transaction (4). A listener clears stale nodes once and tidies
    once."""
    async with backends(sim, SERVER, CLIENT) as (server, client):
        sim.reset_xenstore_requests()
        listener = trio_vchan.VchanListener(CLIENT, "count", backend=server)
        async with listener, trio.open_nursery() as nursery:
            accepted = await accept_in_background(nursery, listener)
            await trio.testing.wait_all_tasks_blocked()
            opened = sim.xenstore_requests
            rounds: list[Counter[tuple[int, str]]] = []
            for _ in range(3):
                before = sim.xenstore_requests
                await connect_once(client, accepted)
                rounds.append(sim.xenstore_requests - before)
            nursery.cancel_scope.cancel()
        closed = sim.xenstore_requests
    # Neither domain is dom0, so neither watches @releaseDomain (only dom0 hears it).
    steady = rounds[-1]
    by_server, by_client = of_domain(steady, SERVER), of_domain(steady, CLIENT)
    assert by_server == Counter({"WRITE": 2, "SET_PERMS": 2, "RM": 1}), steady
    # Both keys read as of one moment: in a transaction (see _advertisement._XenStoreLookup).
    assert by_client == Counter({"TRANSACTION_START": 1, "READ": 2, "TRANSACTION_END": 1}), steady
    assert all(r == steady for r in rounds), rounds
    assert opened == Counter({(SERVER, "RM"): 1, (SERVER, "WRITE"): 2, (SERVER, "SET_PERMS"): 2})
    # Closing withdraws the advertisement it had out (1), looks (1) and tidies in one
    # transaction (start, look and remove at each of the two levels, end).
    tidy = closed - opened - sum(rounds, Counter())
    assert tidy[(SERVER, "TRANSACTION_START")] == 1, tidy
    assert sum(tidy.values()) <= 8, tidy


async def test_a_connection_costs_few_platform_requests(sim: SimulatedHost) -> None:
    """Per connection, the server grants its page and both rings in one share and binds a
    port; the client binds, maps the page and each ring; each side releases what it holds."""
    async with backends(sim, SERVER, CLIENT) as (server, client):
        listener = trio_vchan.VchanListener(
            CLIENT, "count", read_size=65536, write_size=65536, backend=server
        )
        async with listener, trio.open_nursery() as nursery:
            accepted = await accept_in_background(nursery, listener)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(2):  # the second as the first: nothing is done once only
                sim.reset_platform_requests()
                await connect_once(client, accepted)
                counted = sim.platform_requests
                by_server, by_client = of_domain(counted, SERVER), of_domain(counted, CLIENT)
                # The next offer's grant and port are made as this one closes.
                assert by_server == Counter(
                    {
                        "GNT_SHARE": 1,
                        "GNT_RELEASE": 1,
                        "EVTCHN_BIND_UNBOUND": 1,
                        "EVTCHN_STATUS": 1,  # while it waits: has the client bound yet?
                        "EVTCHN_CLOSE": 1,
                        "GNT_SET_UNMAP_NOTIFY": 1,
                    }
                ), counted
                assert by_client == Counter(
                    {
                        "EVTCHN_BIND_INTERDOMAIN": 1,
                        "GNT_MAP": 3,
                        "GNT_SET_UNMAP_NOTIFY": 1,
                        "GNT_RELEASE": 3,
                        "EVTCHN_CLOSE": 1,
                    }
                ), counted
            nursery.cancel_scope.cancel()


async def test_many_listeners_closing_at_once_tidy_their_directory_cheaply(
    sim: SimulatedHost, caplog: pytest.LogCaptureFixture
) -> None:
    """Listeners of one server share a directory; when hundreds close at once, those that see
    siblings leave it to the last, in one request each (a transaction that lists a crowded
    directory conflicts with every sibling's close: 1000 at once timed out), and the last
    removes it."""
    count = 300
    # Names long enough that the listing needs more than one reply (DIRECTORY_PART).
    ports = [f"a-listener-with-a-long-name-{i:04}" for i in range(count)]
    async with backends(sim, SERVER, CLIENT) as (server, _):
        scopes = [trio.CancelScope() for _ in ports]

        async def listen(port: str, scope: trio.CancelScope) -> None:
            async with trio_vchan.VchanListener(CLIENT, port, backend=server) as listener:
                with scope:
                    await listener.accept()
            # closed here, not cancelled: the tidy runs in this task

        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                for port, scope in zip(ports, scopes, strict=True):
                    nursery.start_soon(listen, port, scope)
                await trio.testing.wait_all_tasks_blocked()
                sim.reset_xenstore_requests()
                for scope in scopes:
                    scope.cancel()
        closing = sim.xenstore_requests
        async with XenStoreClient(await sim.backend(0).connect_xenstore()) as xs:
            assert await xs.directory(f"/local/domain/{SERVER}/data") == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == []
    # Per listener: withdraw (RM) and one look (DIRECTORY); a few transactions at the end.
    assert closing[(SERVER, "DIRECTORY_PART")] == 0, closing
    assert closing[(SERVER, "TRANSACTION_START")] <= count // 10, closing
    assert sum(closing.values()) <= 3 * count, closing


# -- the handshake alone, with advertisements in memory ------------------------------------------


async def test_the_handshake_over_advertisements_in_memory(sim: SimulatedHost) -> None:
    """Both roles against the configuration protocol alone: nothing here touches XenStore."""
    advertisements = MemoryAdvertisements()
    path = "/test/memory"
    async with backends(sim, SERVER, CLIENT) as (server_backend, client_backend):
        sim.reset_xenstore_requests()
        port = ServerPort(server_backend, advertisements, CLIENT, path, RingOrders(11, 12), 5.0)
        try:
            async with trio.open_nursery() as nursery:
                endpoints: list[Any] = []

                async def serve() -> None:
                    endpoints.append(await port.accept())

                nursery.start_soon(serve)
                with trio.fail_after(STEP):
                    client = await connect_endpoint(client_backend, advertisements, SERVER, path)
            (server,) = endpoints
        finally:
            await port.aclose()
        async with VchanStream(server) as s, VchanStream(client) as c:
            await one_round_trip(s, c)
        assert advertisements.entries == {}
        assert [call for call in advertisements.calls if not call.startswith("lookup")] == [
            f"withdraw {path}",  # the stale-advertisement sweep
            f"publish {path}",
            f"withdraw {path}",
            f"tidy {path}",
        ]
        assert advertisements.calls.count(f"lookup {path}") == 1
        assert sim.xenstore_requests == Counter()


async def test_a_client_waiting_in_memory_learns_its_server_domain_is_gone(
    sim: SimulatedHost,
) -> None:
    advertisements = MemoryAdvertisements()
    async with backends(sim, CLIENT) as (client,), trio.open_nursery() as nursery:

        async def destroy() -> None:
            await trio.testing.wait_all_tasks_blocked()
            advertisements.destroy_domain(SERVER)

        nursery.start_soon(destroy)
        with trio.fail_after(STEP), pytest.raises(PeerGoneError):
            await connect_endpoint(client, advertisements, SERVER, "/test/gone")


# -- ports: one server per port; a dead one's advertisement is taken over ------------------------


async def test_a_second_listener_on_the_same_port_fails_at_once(sim: SimulatedHost) -> None:
    async with backends(sim, SERVER, CLIENT) as (server, client):
        async with trio_vchan.VchanListener(CLIENT, "taken", backend=server) as first:
            with pytest.raises(OSError, match="port in use") as info:
                trio_vchan.VchanListener(CLIENT, "taken", backend=sim.backend(SERVER))
            assert info.value.errno == errno.EADDRINUSE
            assert first.path in str(info.value)
            with pytest.raises(OSError, match="port in use"):
                async with trio_vchan.serve(CLIENT, "taken", backend=server):
                    pass
            # Other ports, and the same port for another client domain, are free.
            async with trio_vchan.VchanListener(OTHER, "taken", backend=server):
                pass
        # The first is closed: the port is free again, and it still works.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one, server, "taken")
            with trio.fail_after(STEP):
                async with trio_vchan.connect(SERVER, "taken", backend=client) as stream:
                    assert await stream.receive_some() == b"hello"


async def serve_one(backend: Backend, port: str) -> None:
    async with trio_vchan.serve(CLIENT, port, backend=backend) as stream:
        await stream.send_all(b"hello")


_LISTEN_IN_ANOTHER_PROCESS: Final = textwrap.dedent(
    """
    import sys, trio, trio_vchan
    async def main():
        try:
            trio_vchan.VchanListener(2, "taken")
        except OSError as exc:
            print(exc.errno, exc)
            return
        print("listening")
    trio.run(main)
    """
)


async def test_a_listener_in_another_process_of_the_domain_is_refused(sim: SimulatedHost) -> None:
    async with backends(sim, SERVER) as (server,):
        async with trio_vchan.VchanListener(CLIENT, "taken", backend=server) as listener:
            done = await trio.run_process(
                [sys.executable, "-P", "-c", _LISTEN_IN_ANOTHER_PROCESS],
                env=os.environ | sim.environ(SERVER),
                capture_stdout=True,
            )
            said = done.stdout.decode()
            assert said.startswith(f"{errno.EADDRINUSE} "), said
            assert "port in use" in said
            assert listener.path in said
        # Closed here: now the other process gets the port.
        done = await trio.run_process(
            [sys.executable, "-P", "-c", _LISTEN_IN_ANOTHER_PROCESS],
            env=os.environ | sim.environ(SERVER),
            capture_stdout=True,
        )
        assert done.stdout.decode().strip() == "listening"


async def test_an_advertisement_left_by_a_dead_server_is_taken_over(sim: SimulatedHost) -> None:
    path = vchan_path(SERVER, CLIENT, "stale")
    async with backends(sim, SERVER, CLIENT) as (server, client):
        async with XenStoreClient(await server.connect_xenstore()) as xs:  # what a dead one left
            perms = [Permission(Access.NONE, SERVER), Permission(Access.READ, CLIENT)]
            for key, value in (("ring-ref", b"4000"), ("event-channel", b"77")):
                await xs.write(f"{path}/{key}", value)
                await xs.set_perms(f"{path}/{key}", perms)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one, server, "stale")
            with trio.fail_after(STEP):
                async with trio_vchan.connect(SERVER, "stale", backend=client) as stream:
                    assert await stream.receive_some() == b"hello"


async def test_connecting_to_ones_own_domain_is_refused(sim: SimulatedHost) -> None:
    async with backends(sim, SERVER) as (server,):
        with pytest.raises(ValueError, match="is this domain"):
            trio_vchan.VchanListener(SERVER, "self", backend=server)
        with pytest.raises(ValueError, match="is this domain"):
            await trio_vchan.open_vchan_stream(SERVER, "self", backend=server)
        with pytest.raises(ValueError, match="handshake_timeout"):
            trio_vchan.VchanListener(CLIENT, "p", handshake_timeout=0, backend=server)


# -- clients that break the handshake -------------------------------------------------------------


def server_grants(sim: SimulatedHost) -> int:
    return sum(1 for leak in sim.leaks() if leak.startswith(f"domain {SERVER} grant ref"))


PIN_SECONDS: Final = 10.0


async def test_a_client_domain_pinning_pages_cannot_exhaust_the_server(
    sim: SimulatedHost,
) -> None:
    """The hostile domain takes each advertisement, writes a bad cli_live and keeps every
    mapping, for 10 s. The server's grants stay bounded; an honest client of another domain
    connects meanwhile, and one of the hostile domain once it stops."""
    async with (
        backends(sim, SERVER, OTHER, CLIENT) as (server, other, honest_same_domain),
        hostile_peer(sim, CLIENT) as hostile,
    ):
        to_hostile = trio_vchan.VchanListener(CLIENT, "pin", backend=server)
        to_other = trio_vchan.VchanListener(OTHER, "pin", backend=server)
        most_grants = 0
        async with to_hostile, to_other, trio.open_nursery() as nursery:
            from_hostile = await accept_in_background(nursery, to_hostile)
            from_other = await accept_in_background(nursery, to_other)
            await trio.testing.wait_all_tasks_blocked()
            per_advertisement = server_grants(sim) // 2
            attack: dict[str, Any] = {}
            attack_done = trio.Event()

            async def pin() -> None:
                attack.update(
                    await hostile.call("pin", victim=SERVER, path=to_hostile.path, seconds=10)
                )
                attack_done.set()

            nursery.start_soon(pin)
            deadline = trio.current_time() + PIN_SECONDS
            connections = 0
            while trio.current_time() < deadline:
                with trio.fail_after(1.0):  # an honest domain is served promptly throughout
                    async with (
                        trio_vchan.connect(SERVER, "pin", backend=other) as stream,
                        await from_other.receive() as served,
                    ):
                        await one_round_trip(served, stream)
                connections += 1
                most_grants = max(most_grants, server_grants(sim))
                await trio.sleep(0.2)
            await attack_done.wait()
            await hostile.call("unpin")
            with trio.fail_after(1.0):  # and the hostile domain itself once it behaves
                async with (
                    trio_vchan.connect(SERVER, "pin", backend=honest_same_domain) as s,
                    await from_hostile.receive() as served,
                ):
                    await one_round_trip(served, s)
            nursery.cancel_scope.cancel()
    assert attack["cycles"] >= 20, attack  # the attack really ran
    assert connections >= 10
    # One advertisement per listener, plus the connection being served: pinning adds none.
    assert most_grants <= 3 * per_advertisement, (most_grants, per_advertisement, attack)


async def test_a_client_that_stalls_mid_handshake_is_dropped(sim: SimulatedHost) -> None:
    async with (
        backends(sim, SERVER, CLIENT) as (server, honest),
        hostile_peer(sim, CLIENT) as hostile,
    ):
        listener = trio_vchan.VchanListener(CLIENT, "stall", handshake_timeout=0.3, backend=server)
        async with listener, trio.open_nursery() as nursery:
            accepted = await accept_in_background(nursery, listener)
            with trio.fail_after(STEP):
                await hostile.call("stall", victim=SERVER, path=listener.path)
                # It holds the port and the pages; it never sets cli_live. Within the timeout
                # the listener gives up on it and advertises afresh for the next client.
                async with (
                    trio_vchan.connect(SERVER, "stall", backend=honest) as stream,
                    await accepted.receive() as served,
                ):
                    await one_round_trip(served, stream)
            await hostile.call("unpin")
            nursery.cancel_scope.cancel()


# -- XenStore that stalls or refuses --------------------------------------------------------------


@attrs.define
class StallableStream(trio.abc.Stream):
    """A XenStore connection whose replies can be held back."""

    inner: trio.abc.Stream
    flowing: trio.Event = attrs.Factory(trio.Event)

    def __attrs_post_init__(self) -> None:
        self.flowing.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self.flowing.wait()
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.define
class Stalling:
    streams: list[StallableStream] = attrs.Factory(list)

    def stall(self) -> None:
        for stream in self.streams:
            stream.flowing = trio.Event()

    def resume(self) -> None:
        for stream in self.streams:
            stream.flowing.set()

    def wrap(self, backend: Backend) -> Backend:
        async def connect() -> trio.abc.Stream:
            stream = StallableStream(await backend.connect_xenstore())
            if self.streams and not self.streams[0].flowing.is_set():
                stream.flowing = self.streams[0].flowing
            self.streams.append(stream)
            return stream

        return attrs.evolve(backend, connect_xenstore=connect)


async def cancel_after(seconds: float, scope: trio.CancelScope, at: list[float]) -> None:
    await trio.sleep(seconds)
    at.append(trio.current_time())
    scope.cancel()


async def test_a_cancel_is_prompt_while_xenstore_stalls_under_a_server(
    sim: SimulatedHost, caplog: pytest.LogCaptureFixture
) -> None:
    """XenStore stops answering while the server publishes: a cancel still ends accept()
    within 100 ms (here: within 0.5 s, as loaded machines go), as a Cancelled, and the
    withdrawal it could not confirm is logged."""
    stalling = Stalling()
    async with backends(sim, SERVER, CLIENT) as (server, client):
        listener = trio_vchan.VchanListener(CLIENT, "stall", backend=stalling.wrap(server))
        async with listener:
            async with trio.open_nursery() as nursery:  # one connection, all well
                nursery.start_soon(serve_on, listener)
                with trio.fail_after(STEP):
                    async with trio_vchan.connect(SERVER, "stall", backend=client) as stream:
                        assert await stream.receive_some() == b"hello"
            stalling.stall()
            cancelled_at: list[float] = []
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_after, 0.3, scope, cancelled_at)
                    await listener.accept()
            took = trio.current_time() - cancelled_at[0]
            assert scope.cancelled_caught
            assert took < 0.5, f"the cancel took {took:.3f} s"
            # The withdrawal went to the session's chores, which give up after 2 s of silence
            # and say so.
            await trio.sleep(CHORE_TIME + 0.5)
            said = [r.getMessage() for r in caplog.records]
            assert any("could not withdraw the advertisement at" in m for m in said), said
            stalling.resume()
            # A cancelled accept that is not stalled has its advertisement withdrawn all the
            # same, though the cancel returned at once.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listener.accept)
                with trio.fail_after(STEP):
                    while not await advertised(sim, listener.path):  # noqa: ASYNC110 (polls XenStore)
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
            with trio.fail_after(STEP):
                while await advertised(sim, listener.path):  # noqa: ASYNC110 (polls XenStore)
                    await trio.sleep(0.01)


async def advertised(sim: SimulatedHost, path: str) -> bool:
    async with XenStoreClient(await sim.backend(0).connect_xenstore()) as xs:
        try:
            await xs.read(f"{path}/event-channel")
        except trio_vchan.XenStoreError:
            return False
        return True


async def serve_on(listener: trio_vchan.VchanListener) -> None:
    async with await listener.accept() as stream:
        await stream.send_all(b"hello")


async def test_a_cancel_is_prompt_while_xenstore_stalls_under_a_client(sim: SimulatedHost) -> None:
    stalling = Stalling()
    async with backends(sim, CLIENT) as (client,):
        backend = stalling.wrap(client)
        stalling.stall()
        cancelled_at: list[float] = []
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_after, 0.3, scope, cancelled_at)
                await trio_vchan.open_vchan_stream(SERVER, "stall", backend=backend)
        took = trio.current_time() - cancelled_at[0]
        assert scope.cancelled_caught
        assert took < 0.5, f"the cancel took {took:.3f} s"


async def test_xenstore_refusing_the_advertisement_is_raised_not_retried(
    sim: SimulatedHost,
) -> None:
    async with backends(sim, SERVER) as (server,):
        listener = trio_vchan.VchanListener(CLIENT, "/local/domain/0/forbidden", backend=server)
        async with listener:
            with trio.fail_after(STEP), pytest.raises(trio_vchan.XenStoreError) as info:
                await listener.accept()
            assert info.value.errno == errno.EACCES
            assert "/local/domain/0/forbidden" in str(info.value)


# -- resources that run out -----------------------------------------------------------------------


@attrs.define
class Starved(GrantMemory):
    """Grant sharing that fails with ENOSPC the first ``failures`` times."""

    memory: GrantMemory
    failures: int

    def share(self, remote_domid: int, count: int) -> Share:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.ENOSPC, "no free grant entries")
        return self.memory.share(remote_domid, count)

    def map(self, remote_domid: int, refs: Sequence[int], *, writable: bool) -> Any:
        return self.memory.map(remote_domid, refs, writable=writable)


async def test_running_out_of_grants_is_waited_out(
    sim: SimulatedHost, caplog: pytest.LogCaptureFixture
) -> None:
    async with backends(sim, SERVER, CLIENT) as (server, client):
        starved = attrs.evolve(server, memory=Starved(server.memory, failures=3))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one, starved, "starved")
            with trio.fail_after(STEP):
                async with trio_vchan.connect(SERVER, "starved", backend=client) as stream:
                    assert await stream.receive_some() == b"hello"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    assert all("no free grant entries; trying again" in w for w in warnings), warnings


# -- peers whose domain is destroyed, or whose port goes ------------------------------------------


async def receive_expecting_an_error(stream: VchanStream, failures: list[BaseException]) -> None:
    try:
        data = await stream.receive_some()
    except trio.BrokenResourceError as exc:
        failures.append(exc)
    else:
        failures.append(AssertionError(f"received {data!r}"))


async def send_expecting_an_error(
    stream: VchanStream, data: bytes, failures: list[BaseException]
) -> None:
    try:
        await stream.send_all(data)
    except trio.BrokenResourceError as exc:
        failures.append(exc)
    else:
        failures.append(AssertionError("sent it all"))


async def test_a_client_waiting_for_a_destroyed_server_domain_gives_up(sim: SimulatedHost) -> None:
    """As dom0's vchan-socket-proxy waits for a stub domain's server: dom0 hears
    @releaseDomain and may read the server's home, so it can tell."""
    async with backends(sim, 0) as (client,):
        sim.add_domain(SERVER)
        async with trio.open_nursery() as nursery:

            async def destroy() -> None:
                await trio.testing.wait_all_tasks_blocked()
                sim.destroy_domain(SERVER)

            nursery.start_soon(destroy)
            with trio.fail_after(STEP), pytest.raises(PeerGoneError, match="domain 1 was"):
                await trio_vchan.open_vchan_stream(SERVER, "gone", backend=client)


async def test_a_stream_whose_peer_domain_is_destroyed_breaks(sim: SimulatedHost) -> None:
    async with backends(sim, CLIENT) as (client,):
        server = sim.backend(SERVER)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_forever, server)
            with trio.fail_after(STEP):
                stream = await trio_vchan.open_vchan_stream(SERVER, "doomed", backend=client)
            async with stream:
                assert await stream.receive_some() == b"hello"
                sim.destroy_domain(SERVER)
                with trio.fail_after(STEP):
                    assert await stream.receive_some() == b""  # its live byte was cleared
                    with pytest.raises(trio.BrokenResourceError):
                        await stream.send_all(b"x" * (1 << 20))
            nursery.cancel_scope.cancel()
        server.close()


async def serve_forever(backend: Backend) -> None:
    async with trio_vchan.serve(CLIENT, "doomed", backend=backend) as stream:
        await stream.send_all(b"hello")
        await trio.sleep_forever()


@attrs.define
class Blind(EventChannels):
    """Event channels that cannot tell their peer's state, as on Xen's devices."""

    events: EventChannels

    def bind_unbound(self, remote_domid: int) -> EventChannel:
        return _BlindChannel(self.events.bind_unbound(remote_domid))

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> EventChannel:
        return _BlindChannel(self.events.bind_interdomain(remote_domid, remote_port))


@attrs.define
class _BlindChannel:
    channel: EventChannel

    @property
    def port(self) -> int:
        return self.channel.port

    def fileno(self) -> int:
        return self.channel.fileno()

    def notify(self) -> None:
        self.channel.notify()

    def consume(self) -> Collection[int]:
        return self.channel.consume()

    def status(self) -> ChannelStatus:
        return ChannelStatus.UNKNOWN

    def close(self) -> None:
        self.channel.close()


@asynccontextmanager
async def serving_a_silent_peer(
    server: Backend, peer: HostilePeer, port: str, **sizes: int
) -> AsyncIterator[VchanStream]:
    """A stream served to the hostile peer, which attaches by hand and asks for no
    unmap-notify (as ocaml-vchan does)."""
    async with trio.open_nursery() as nursery:
        streams: list[VchanStream] = []
        served = trio.Event()

        async def serve() -> None:
            async with trio_vchan.serve(CLIENT, port, backend=server, **sizes) as stream:
                streams.append(stream)
                served.set()
                await trio.sleep_forever()

        nursery.start_soon(serve)
        await trio.testing.wait_all_tasks_blocked()
        path = vchan_path(server.domid, CLIENT, port)
        with trio.fail_after(STEP):
            await peer.call(
                "attach", seed=1, victim=server.domid, path=path, honest=True, unmap_notify=False
            )
            await served.wait()
        yield streams[0]
        nursery.cancel_scope.cancel()


async def test_a_silent_peer_whose_domain_is_destroyed_is_noticed_by_dom0(
    sim: SimulatedHost,
) -> None:
    """A peer that asked for no unmap-notify (as ocaml-vchan), on a backend that cannot tell
    a closed port (as Xen's devices): only XenStore's @releaseDomain says it has gone, and C
    xenstored sends that to dom0 only."""
    async with backends(sim, 0) as (server,), hostile_peer(sim, CLIENT) as peer:
        blind = attrs.evolve(server, events=Blind(server.events))
        async with serving_a_silent_peer(blind, peer, "silent") as stream:
            failures: list[BaseException] = []
            with trio.fail_after(STEP):
                async with trio.open_nursery() as waiting:
                    waiting.start_soon(receive_expecting_an_error, stream, failures)
                    await trio.testing.wait_all_tasks_blocked()
                    sim.destroy_domain(CLIENT)
            (failure,) = failures
            assert isinstance(failure, trio.BrokenResourceError), failure
            assert isinstance(failure.__cause__, PeerGoneError), failure.__cause__
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"x")


async def test_a_peer_whose_port_closes_without_clearing_its_live_byte(
    sim: SimulatedHost,
) -> None:
    """Its port goes first and its mapping stays (live byte still 1, no unmap-notify): the
    sleeping side wakes, finds the port closed, and ends as if the peer had exited."""
    async with backends(sim, SERVER) as (server,), hostile_peer(sim, CLIENT) as peer:
        sizes = {"read_size": 1024, "write_size": 1024}
        async with serving_a_silent_peer(server, peer, "portless", **sizes) as stream:
            failures: list[BaseException] = []
            with trio.fail_after(STEP):
                async with trio.open_nursery() as sending:
                    sending.start_soon(send_expecting_an_error, stream, b"x" * 4096, failures)
                    await trio.testing.wait_all_tasks_blocked()  # blocked: the ring is full
                    await peer.call("close_port")
            (failure,) = failures
            assert isinstance(failure, trio.BrokenResourceError), failure
            assert "port" in str(failure)
            with trio.fail_after(STEP):
                assert await stream.receive_some() == b""


# -- many at once ---------------------------------------------------------------------------------


async def test_more_waiting_clients_than_xenstore_allows_watches(
    sim: SimulatedHost, caplog: pytest.LogCaptureFixture
) -> None:
    """150 clients of one process wait at once, more than the 128 watches XenStore allows a
    domain: the rest look now and then instead, and all connect."""
    count = 150
    caplog.set_level(logging.INFO, "trio_vchan")
    async with backends(sim, SERVER, CLIENT) as (server, client):
        connected: list[str] = []

        async def connect(port: str) -> None:
            async with trio_vchan.connect(SERVER, port, backend=client) as stream:
                assert await stream.receive_some() == b"hello"
                connected.append(port)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for n in range(count):
                    nursery.start_soon(connect, f"many{n}")
                await trio.testing.wait_all_tasks_blocked()  # all waiting, watching or not
                for n in range(count):
                    nursery.start_soon(serve_small, server, f"many{n}")
        assert len(connected) == count
    polled = [r for r in caplog.records if "instead" in r.getMessage()]
    assert len(polled) == count - 128, [r.getMessage() for r in polled[:3]]


async def serve_small(backend: Backend, port: str) -> None:
    async with trio_vchan.serve(
        CLIENT, port, read_size=1024, write_size=1024, backend=backend
    ) as stream:
        await stream.send_all(b"hello")
