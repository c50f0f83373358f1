"""Hostile or broken XenStore advertisements: clear errors or cancellable waits, never a hang.

A hostile server writes its advertisement directly with :class:`XenStoreClient`: values that
are not numbers or out of range, refs and ports that do not exist or are not ours, permissions
that hide the nodes, nodes that vanish half-way through the client's handshake, and servers
that die between advertising and the client's mapping. The client must raise a clear
:class:`~trio_vchan.ProtocolError` or :class:`OSError`, or wait (for an advertisement it can use)
until cancelled; whatever happens, it leaves nothing behind.
"""

from __future__ import annotations

import errno
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import pytest
import trio
import trio.testing

import trio_vchan
from trio_vchan import Backend, ProtocolError, VchanStream, XenStoreError
from trio_vchan._advertisement import Advertised, XenStoreAdvertisements
from trio_vchan._backend import GrantMemory, Mapping
from trio_vchan._handshake import Endpoint, _Pages, vchan_path
from trio_vchan._layout import RingOrders, Role
from trio_vchan._xenstore import XenStoreClient
from trio_vchan._xs_wire import Access, Permission
from trio_vchan.sim import SimulatedHost
from trio_vchan.testing._hostile import start_hostile_process

SERVER, CLIENT, THIRD = 1, 2, 5
PORT: Final = "hx"
PATH: Final = vchan_path(SERVER, CLIENT, PORT)
#: What the library itself writes: owner the server, others nothing, the client may read.
PERMS: Final = [Permission(Access.NONE, SERVER), Permission(Access.READ, CLIENT)]


@asynccontextmanager
async def domains(sim: SimulatedHost) -> AsyncIterator[tuple[Backend, Backend]]:
    server, client = sim.backend(SERVER), sim.backend(CLIENT)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


@asynccontextmanager
async def xenstore(backend: Backend) -> AsyncIterator[XenStoreClient]:
    async with XenStoreClient(await backend.connect_xenstore()) as xs:
        yield xs


async def write_advertisement(
    backend: Backend,
    ring_ref: bytes,
    port: bytes,
    perms: Sequence[Permission] = PERMS,
) -> None:
    async with xenstore(backend) as xs:
        tx = await xs.transaction_start()
        for key, value in (("ring-ref", ring_ref), ("event-channel", port)):
            await xs.write(f"{PATH}/{key}", value, tx=tx)
            await xs.set_perms(f"{PATH}/{key}", perms, tx=tx)
        await xs.transaction_end(tx, commit=True)


async def advertise(backend: Backend) -> Endpoint:
    """The library's own pages and advertisement, as a listener makes them."""
    pages = _Pages.grant(backend, CLIENT, RingOrders(10, 11))
    channel = backend.events.bind_unbound(CLIENT)
    ring = pages.ring(channel)
    async with xenstore(backend) as xs:

        async def shared() -> XenStoreClient:
            return xs

        advertised = Advertised(pages.share.refs[0], channel.port)
        await XenStoreAdvertisements(backend.domid, shared).publish(PATH, CLIENT, advertised)
    return Endpoint(Role.SERVER, ring, channel, [pages.share], PATH, CLIENT)


async def remove_vchan_nodes(backend: Backend) -> None:
    """What a toolstack does for a dead domain: the vchan directory goes."""
    async with xenstore(backend) as xs:
        await xs.rm(f"/local/domain/{SERVER}/data/vchan")


@attrs.define
class Attempt:
    """``open_vchan_stream`` running in the background."""

    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    result: list[Any] = attrs.Factory(list)
    finished: trio.Event = attrs.Factory(trio.Event)

    @property
    def done(self) -> bool:
        return bool(self.result)


@asynccontextmanager
async def connecting(backend: Backend) -> AsyncIterator[Attempt]:
    """Connect as the client meanwhile; on exit, cancel it if it still waits."""
    attempt = Attempt()

    async def run() -> None:
        with attempt.scope:
            try:
                attempt.result.append(
                    await trio_vchan.open_vchan_stream(SERVER, PORT, backend=backend)
                )
            except Exception as exc:
                attempt.result.append(exc)
            finally:
                attempt.finished.set()

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                await trio.testing.wait_all_tasks_blocked()
                yield attempt
                await trio.testing.wait_all_tasks_blocked()
                attempt.scope.cancel()
    finally:
        for result in attempt.result:
            if isinstance(result, VchanStream):
                await result.aclose()


def client_leaks(sim: SimulatedHost) -> list[str]:
    """What the client domain still holds on the host."""
    return [leak for leak in sim.leaks() if leak.startswith(f"domain {CLIENT} ")]


# -- values that are not what they claim to be ---------------------------------------------------

NOT_NUMBERS: Final = [
    b"",
    b"abc",
    b"12abc",
    b" 12",
    b"12\n",
    b"0x10",
    b"-1",
    b"+5",
    b"1.5",
    b"1e3",
    "\u0663".encode(),  # ARABIC-INDIC DIGIT THREE: isdecimal(), but not ASCII
    b"\xff\xfe",
    b"0",
    b"0" * 12 + b"1",
    b"9" * 2000,  # close to the 2048 bytes a domain may store in a node
]
OUT_OF_RANGE: Final = {"ring-ref": [b"4294967296"], "event-channel": [b"2147483648", b"4294967295"]}


@pytest.mark.parametrize("key", ["ring-ref", "event-channel"])
@pytest.mark.parametrize("value", [*NOT_NUMBERS, b"<out of range>"])
async def test_advertised_values_that_are_not_numbers_in_range_are_protocol_errors(
    sim: SimulatedHost, key: str, value: bytes
) -> None:
    async with domains(sim) as (server, client):
        for bad in OUT_OF_RANGE[key] if value == b"<out of range>" else [value]:
            good = {"ring-ref": b"8", "event-channel": b"1"}
            good[key] = bad
            await write_advertisement(server, good["ring-ref"], good["event-channel"])
            with trio.fail_after(30), pytest.raises(ProtocolError, match=key) as info:
                await trio_vchan.open_vchan_stream(SERVER, PORT, backend=client)
            assert len(str(info.value)) < 200  # a huge value is not repeated in full
            assert client_leaks(sim) == []
        await remove_vchan_nodes(server)


async def test_a_ring_ref_that_does_not_exist_is_an_os_error(sim: SimulatedHost) -> None:
    async with domains(sim) as (server, client):
        channel = server.events.bind_unbound(CLIENT)
        try:
            await write_advertisement(server, b"4000000000", str(channel.port).encode())
            with trio.fail_after(30), pytest.raises(FileNotFoundError, match="4000000000"):
                await trio_vchan.open_vchan_stream(SERVER, PORT, backend=client)
            assert client_leaks(sim) == []  # the port it had bound is closed again
        finally:
            channel.close()
        await remove_vchan_nodes(server)


async def test_a_ring_ref_granted_to_another_domain_is_refused(sim: SimulatedHost) -> None:
    async with domains(sim) as (server, client):
        channel = server.events.bind_unbound(CLIENT)
        share = server.memory.share(THIRD, 1)
        try:
            ref, port = str(share.refs[0]).encode(), str(channel.port).encode()
            await write_advertisement(server, ref, port)
            with trio.fail_after(30), pytest.raises(PermissionError, match="third domain"):
                await trio_vchan.open_vchan_stream(SERVER, PORT, backend=client)
            assert client_leaks(sim) == []
        finally:
            share.close()
            channel.close()
        await remove_vchan_nodes(server)


# -- advertisements the client cannot use yet: it waits, cancellably ----------------------------


@asynccontextmanager
async def honest_server(backend: Backend) -> AsyncIterator[VchanStream]:
    """A real advertisement, made by the library's own handshake; closed and withdrawn after."""
    stream = VchanStream(await advertise(backend))
    try:
        yield stream
    finally:
        await stream.aclose()
        await remove_vchan_nodes(backend)


async def check_connected(server: VchanStream, attempt: Attempt) -> None:
    with trio.fail_after(30):
        await attempt.finished.wait()
        (client,) = attempt.result
        assert isinstance(client, VchanStream), client
        await client.send_all(b"through")
        assert await server.receive_some() == b"through"


async def test_a_port_that_does_not_exist_is_waited_out_until_a_fresh_advertisement(
    sim: SimulatedHost,
) -> None:
    """A stale advertisement looks exactly like one another client took first (binding fails
    with EINVAL either way, on Xen too): the client waits for the next one."""
    async with domains(sim) as (server, client):
        await write_advertisement(server, b"8", b"77")
        async with connecting(client) as attempt:
            assert not attempt.done  # waiting
            async with honest_server(server) as stream:  # advertises afresh at the same path
                await check_connected(stream, attempt)


async def test_a_client_waiting_on_a_stale_advertisement_can_be_cancelled(
    sim: SimulatedHost,
) -> None:
    async with domains(sim) as (server, client):
        await write_advertisement(server, b"8", b"77")
        async with connecting(client) as attempt:
            assert not attempt.done
            attempt.scope.cancel()
        assert attempt.scope.cancelled_caught
        assert client_leaks(sim) == []
        await remove_vchan_nodes(server)


async def test_nodes_the_client_may_not_read_are_waited_for_until_they_become_readable(
    sim: SimulatedHost,
) -> None:
    async with (
        domains(sim) as (server, client),
        honest_server(server) as stream,
        xenstore(server) as xs,
    ):
        for key in ("ring-ref", "event-channel"):  # hide them from the client
            await xs.set_perms(f"{PATH}/{key}", [Permission(Access.NONE, SERVER)])
        async with connecting(client) as attempt:
            assert not attempt.done
            for key in ("ring-ref", "event-channel"):
                await xs.set_perms(f"{PATH}/{key}", PERMS)
            await check_connected(stream, attempt)


def reading_one_by_one(
    monkeypatch: pytest.MonkeyPatch, after_each: Callable[[str], Awaitable[None]]
) -> None:
    """Make the client's reads of an advertisement one request at a time, calling
    ``after_each(path)`` after each: what a store may show a client whose reads are not in a
    transaction (C xenstored lets other connections in between)."""
    original_read = XenStoreClient.read

    async def read_together(
        self: XenStoreClient, paths: Sequence[str]
    ) -> list[bytes | XenStoreError]:
        values: list[bytes | XenStoreError] = []
        for path in paths:
            try:
                values.append(await original_read(self, path))
            except XenStoreError as exc:
                values.append(exc)
            await after_each(path)
        return values

    monkeypatch.setattr(XenStoreClient, "read_together", read_together)


@pytest.mark.parametrize("vanishing", ["event-channel", "the directory"])
async def test_a_node_that_vanishes_mid_handshake_is_waited_for(
    sim: SimulatedHost, monkeypatch: pytest.MonkeyPatch, vanishing: str
) -> None:
    """The client has read ``ring-ref``; before it reads ``event-channel``, nodes go."""
    removed = trio.Event()
    async with (
        domains(sim) as (server, client),
        honest_server(server) as stream,
        xenstore(server) as xs,
    ):
        saved = {key: await xs.read(f"{PATH}/{key}") for key in ("ring-ref", "event-channel")}

        async def between_reads(path: str) -> None:
            if path.endswith("/ring-ref") and not removed.is_set():
                await xs.rm(f"{PATH}/event-channel" if vanishing == "event-channel" else PATH)
                removed.set()

        reading_one_by_one(monkeypatch, between_reads)
        async with connecting(client) as attempt:
            assert removed.is_set()
            assert not attempt.done  # ENOENT: no advertisement (yet); it waits
            for key, value in saved.items():  # the server advertises again
                await xs.write(f"{PATH}/{key}", value)
                await xs.set_perms(f"{PATH}/{key}", PERMS)
            await check_connected(stream, attempt)


async def test_a_server_that_dies_after_the_client_read_the_advertisement(
    sim: SimulatedHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its port is gone before the client binds: as a stale advertisement, a cancellable wait."""
    server, client = sim.backend(SERVER), sim.backend(CLIENT)
    endpoint = await advertise(server)

    async def after_read(path: str) -> None:
        if path.endswith("/event-channel"):
            server.close()  # the server's process dies: the host releases its pages and port

    reading_one_by_one(monkeypatch, after_read)
    try:
        async with connecting(client) as attempt:
            assert not attempt.done
        assert attempt.scope.cancelled_caught
        assert client_leaks(sim) == []
    finally:
        endpoint.release()  # the dead server's own mappings (its handles are gone already)
        client.close()
    await remove_vchan_nodes(sim.backend(0))


@attrs.define
class _DyingServerMemory(GrantMemory):
    """The client's grant device, but the server dies just before the first map."""

    memory: GrantMemory
    server: Backend

    def share(self, remote_domid: int, count: int) -> Any:
        return self.memory.share(remote_domid, count)

    def map(self, remote_domid: int, refs: Sequence[int], *, writable: bool) -> Mapping:
        self.server.close()
        return self.memory.map(remote_domid, refs, writable=writable)


async def test_a_server_that_dies_between_the_clients_bind_and_map_is_an_os_error(
    sim: SimulatedHost,
) -> None:
    server, client = sim.backend(SERVER), sim.backend(CLIENT)
    endpoint = await advertise(server)
    dying = attrs.evolve(client, memory=_DyingServerMemory(client.memory, server))
    try:
        with trio.fail_after(30), pytest.raises(FileNotFoundError, match="no grant ref"):
            await trio_vchan.open_vchan_stream(SERVER, PORT, backend=dying)
        assert client_leaks(sim) == []
    finally:
        endpoint.release()
        client.close()
    await remove_vchan_nodes(sim.backend(0))


async def test_a_server_process_killed_after_advertising(sim: SimulatedHost) -> None:
    """SIGKILL leaves the nodes behind (nothing in the process can remove them): the client
    waits for a usable advertisement and its cancel works."""
    process = await start_hostile_process(sim, SERVER)
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        command = {"op": "serve", "seed": 1, "victim": CLIENT, "path": PATH, "honest": True}
        await process.stdin.send_all(json.dumps(command).encode() + b"\n")
        reply = b""
        with trio.fail_after(60):
            while not reply.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, "the hostile peer exited"
                reply += chunk
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdin.aclose()
        await process.stdout.aclose()
    client = sim.backend(CLIENT)
    try:
        async with connecting(client) as attempt:
            assert not attempt.done
        assert attempt.scope.cancelled_caught
        assert client_leaks(sim) == []
    finally:
        client.close()
    await sim.wait_idle()
    assert {leak for leak in sim.leaks() if "xenstore" not in leak} == set()
    await remove_vchan_nodes(sim.backend(0))


# -- a hostile client against the server's advertisement ---------------------------------------


async def test_a_client_cannot_change_or_remove_the_servers_advertisement(
    sim: SimulatedHost,
) -> None:
    async with domains(sim) as (server, client), honest_server(server) as stream:
        async with xenstore(client) as xs:
            attacks = [
                xs.write(f"{PATH}/ring-ref", b"12"),
                xs.write(f"{PATH}/event-channel", b"1"),
                xs.rm(f"{PATH}/ring-ref"),
                xs.rm(PATH),
                xs.set_perms(f"{PATH}/ring-ref", [Permission(Access.BOTH, CLIENT)]),
                xs.mkdir(f"{PATH}/extra"),
                xs.write(f"/local/domain/{SERVER}/data/vchan/{CLIENT}/other/ring-ref", b"8"),
            ]
            for attack in attacks:
                with pytest.raises(XenStoreError) as info:
                    await attack
                assert info.value.errno == errno.EACCES
        async with connecting(client) as attempt:
            await check_connected(stream, attempt)


async def test_a_third_domain_cannot_read_the_advertisement(sim: SimulatedHost) -> None:
    async with domains(sim) as (server, _), honest_server(server):
        third = sim.backend(THIRD)
        try:
            async with xenstore(third) as xs:
                for key in ("ring-ref", "event-channel"):
                    with pytest.raises(XenStoreError) as info:
                        await xs.read(f"{PATH}/{key}")
                    assert info.value.errno == errno.EACCES
        finally:
            third.close()


async def test_a_server_whose_advertisement_is_removed_waits_and_cancels_cleanly(
    sim: SimulatedHost,
) -> None:
    async with domains(sim) as (server, _):
        listener = trio_vchan.VchanListener(CLIENT, PORT, backend=server)
        async with listener:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(listener.accept)
                    await trio.testing.wait_all_tasks_blocked()
                    dom0 = sim.backend(0)
                    try:
                        async with xenstore(dom0) as xs:
                            await xs.rm(f"/local/domain/{SERVER}/data/vchan")
                    finally:
                        dom0.close()
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.cancel_scope.cancel()
