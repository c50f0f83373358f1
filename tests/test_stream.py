"""VchanStream on the simulated host: trio's conformance suite and the stream's own semantics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import trio_vchan
from trio_vchan import Backend, Live, ProtocolError, Role, VchanStream
from trio_vchan._layout import LEFT_PROD, SRV_LIVE
from trio_vchan.sim import SimulatedHost

SERVER, CLIENT = 1, 2


@asynccontextmanager
async def backends(sim: SimulatedHost) -> AsyncIterator[tuple[Backend, Backend]]:
    server, client = sim.backend(SERVER), sim.backend(CLIENT)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


async def open_pair(
    server: Backend,
    client: Backend,
    port: str = "test",
    read_size: int = 4096,
    write_size: int = 4096,
) -> tuple[VchanStream, VchanStream]:
    """Serve and connect at once, in one process; returns (server stream, client stream)."""
    listener = trio_vchan.VchanListener(
        CLIENT, port, read_size=read_size, write_size=write_size, backend=server
    )
    async with listener, trio.open_nursery() as nursery:
        accepted: list[VchanStream] = []

        async def accept() -> None:
            accepted.append(await listener.accept())

        nursery.start_soon(accept)
        client_stream = await trio_vchan.open_vchan_stream(SERVER, port, backend=client)
    return accepted[0], client_stream


async def clog(streams: tuple[VchanStream, VchanStream]) -> tuple[VchanStream, VchanStream]:
    """Fill both rings so that the next send_all blocks."""
    for stream in streams:
        while space := stream.buffer_space:
            await stream.send_all(b"x" * space)
    return streams


async def test_trio_conformance_suite(sim: SimulatedHost) -> None:
    async with backends(sim) as (server, client):
        counter = iter(range(1000))

        async def make() -> tuple[VchanStream, VchanStream]:
            return await open_pair(server, client, port=f"p{next(counter)}")

        async def make_clogged() -> tuple[VchanStream, VchanStream]:
            return await clog(
                await open_pair(server, client, f"p{next(counter)}", read_size=1024, write_size=1)
            )

        await trio.testing.check_two_way_stream(make, make_clogged)


@asynccontextmanager
async def pair(
    sim: SimulatedHost, read_size: int = 4096, write_size: int = 4096
) -> AsyncIterator[tuple[VchanStream, VchanStream]]:
    async with backends(sim) as (server, client):
        server_stream, client_stream = await open_pair(
            server, client, read_size=read_size, write_size=write_size
        )
        async with server_stream, client_stream:
            yield server_stream, client_stream


async def test_roles_state_and_path(sim: SimulatedHost) -> None:
    async with pair(sim, read_size=1024, write_size=2048) as (server, client):
        assert (server.role, client.role) == (Role.SERVER, Role.CLIENT)
        assert server.path == client.path == f"/local/domain/{SERVER}/data/vchan/{CLIENT}/test"
        assert server.peer_live() is client.peer_live() is Live.CONNECTED
        assert (server.buffer_space, client.buffer_space) == (2048, 1024)
        await client.send_all(b"abc")
        assert server.data_ready == 3
        await client.aclose()
        assert server.peer_live() is Live.EXITED
        with pytest.raises(trio.ClosedResourceError):
            client.data_ready  # noqa: B018


async def test_end_of_stream_only_after_all_data(sim: SimulatedHost) -> None:
    async with pair(sim, read_size=1024) as (server, client):
        await client.send_all(b"x" * 1000)
        await client.aclose()
        received = b""
        while data := await server.receive_some(300):
            received += data
        assert received == b"x" * 1000
        assert await server.receive_some() == b""  # and it stays at end of stream
        with pytest.raises(trio.BrokenResourceError, match="peer closed"):
            await server.send_all(b"late")


async def test_large_send_all_streams_through_a_small_ring(sim: SimulatedHost) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB through a 1 KiB ring
    async with pair(sim, read_size=1024) as (server, client), trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        received = bytearray()
        while len(received) < len(payload):
            received += await server.receive_some(4096)
        assert received == payload


async def test_receive_returns_what_is_there_without_waiting_for_more(
    sim: SimulatedHost,
) -> None:
    async with pair(sim) as (server, client):
        await client.send_all(b"short")
        with trio.fail_after(10):
            assert await server.receive_some(1000) == b"short"


@pytest.mark.parametrize("blocked", ["receive", "send", "wait_send"])
async def test_blocked_calls_are_cancellable_and_the_stream_survives(
    sim: SimulatedHost, blocked: str
) -> None:
    async with pair(sim, read_size=1024, write_size=1024) as (server, client):
        await clog((server, client))
        assert await server.receive_some() == b"x" * 1024  # now only the server's ring is full
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "receive": lambda: server.receive_some(),
            "send": lambda: server.send_all(b"y" * 100),
            "wait_send": lambda: server.wait_send_all_might_not_block(),
        }
        scope = trio.CancelScope()
        returned = []

        async def call() -> None:
            with scope:
                returned.append(await calls[blocked]())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
        assert scope.cancelled_caught
        assert returned == []
        # Still usable: data flows both ways afterwards.
        # Orders 10/11: a 2 KiB right ring (receive_some would take it a step at a time: the
        # server waits for room).
        assert await client.receive_exactly(2048) == b"x" * 2048
        await server.send_all(b"after")
        assert await client.receive_some() == b"after"
        await client.send_all(b"back")
        assert await server.receive_some() == b"back"


async def test_aclose_wakes_a_blocked_receiver_with_closed_resource_error(
    sim: SimulatedHost,
) -> None:
    async with pair(sim) as (server, _), trio.open_nursery() as nursery:

        async def receive() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await server.receive_some()

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        await server.aclose()


async def test_concurrent_use_of_one_direction_is_busy(sim: SimulatedHost) -> None:
    async with pair(sim) as (server, client), trio.open_nursery() as nursery:
        nursery.start_soon(server.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await server.receive_some()
        await client.send_all(b"wake")


@pytest.mark.parametrize("bad", [0, -5])
async def test_receive_some_max_bytes_must_be_positive(sim: SimulatedHost, bad: int) -> None:
    async with pair(sim) as (server, _):
        with pytest.raises(ValueError, match="max_bytes must be >= 1"):
            await server.receive_some(bad)


async def test_hostile_index_breaks_the_stream_for_good(sim: SimulatedHost) -> None:
    async with pair(sim, read_size=1024) as (server, client):
        page = client._endpoint.regions[0].buffer  # the client's own mapping of the shared page
        page[LEFT_PROD : LEFT_PROD + 4] = (10**6).to_bytes(4, "little")
        for _ in range(2):
            with pytest.raises(trio.BrokenResourceError) as info:
                await server.receive_some()
            assert isinstance(info.value.__cause__, ProtocolError)
        with pytest.raises(trio.BrokenResourceError):
            await server.send_all(b"x")


async def test_hostile_live_byte_breaks_the_stream(sim: SimulatedHost) -> None:
    async with pair(sim) as (server, client):
        server._endpoint.regions[0].buffer[SRV_LIVE] = 7
        with pytest.raises(trio.BrokenResourceError) as info:
            await client.receive_some()
        assert "live byte is 7" in str(info.value.__cause__)


async def test_serve_and_connect_context_managers(sim: SimulatedHost) -> None:
    async with backends(sim) as (server_backend, client_backend):

        async def server_side() -> None:
            async with trio_vchan.serve(CLIENT, 7, backend=server_backend) as stream:
                await stream.send_all(b"from the server")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_side)
            async with trio_vchan.connect(SERVER, 7, backend=client_backend) as stream:
                assert stream.path.endswith("/vchan/2/7")  # an int port, written in decimal
                assert await stream.receive_some() == b"from the server"
                assert await stream.receive_some() == b""


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("has space", r"port must match \[a-zA-Z0-9_-\]\+"),
        ("", r"port must match"),
        (-1, "an int port must be >= 0"),
        ("/bad path", "not a valid XenStore path"),
    ],
)
async def test_bad_ports_say_what_is_allowed(port: str | int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        async with trio_vchan.serve(CLIENT, port):
            pass
    with pytest.raises(ValueError, match=message):
        await trio_vchan.open_vchan_stream(SERVER, port)


@pytest.mark.parametrize("domid", [-1, 32752, 2**16])
async def test_bad_domids(domid: int) -> None:
    with pytest.raises(ValueError, match=r"client_domid must be 0\.\.32751"):
        trio_vchan.VchanListener(domid, "p")


async def test_no_platform_explains_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIO_VCHAN_SIM", raising=False)
    with pytest.raises(
        trio_vchan.BackendUnavailableError, match=r"trio-vchan sim.*/dev/xen/evtchn"
    ):
        await trio_vchan.open_vchan_stream(SERVER, "p")


async def test_busy_poll_receives_and_is_bounded(sim: SimulatedHost) -> None:
    async with pair(sim) as (server, client):
        assert server.busy_poll == 0
        server.busy_poll = 0.001
        with pytest.raises(ValueError, match=r"busy_poll must be 0\.\.0\.01 seconds"):
            server.busy_poll = 1
        assert server.busy_poll == 0.001
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.receive_some)  # spins, then sleeps on the event channel
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(b"ping")
        await client.send_all(b"pong")
        assert await server.receive_some() == b"pong"


async def test_two_clients_of_one_domain_racing_for_one_advertisement(sim: SimulatedHost) -> None:
    """The loser of the race waits for the listener's next advertisement."""
    async with backends(sim) as (server_backend, client_backend):
        listener = trio_vchan.VchanListener(CLIENT, "race", backend=server_backend)
        served: list[bytes] = []

        async def serve_two() -> None:
            for _ in range(2):
                async with await listener.accept() as stream:
                    served.append(bytes(await stream.receive_some()))

        async def client(message: bytes) -> None:
            async with trio_vchan.connect(SERVER, "race", backend=client_backend) as stream:
                await stream.send_all(message)
                assert await stream.receive_some() == b""  # the server closes after reading

        with trio.fail_after(30):
            async with listener, trio.open_nursery() as nursery:
                nursery.start_soon(serve_two)
                nursery.start_soon(client, b"first")
                nursery.start_soon(client, b"second")
        assert sorted(served) == [b"first", b"second"]
