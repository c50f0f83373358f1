"""The stream's calls beyond trio.abc.Stream: non-blocking sends and receives, receiving into a
buffer, exact counts, and moving data between the ring and a file descriptor."""

from __future__ import annotations

import array
import contextlib
import os
from pathlib import Path

import pytest
import trio
import trio.testing
from test_stream import pair

from trio_vchan import IncompleteReceiveError, VchanStream
from trio_vchan.sim import SimulatedHost

# -- send_nowait / receive_nowait -----------------------------------------------------------------


async def test_nowait_calls_move_whole_messages_without_checkpoints(sim: SimulatedHost) -> None:
    async with pair(sim, read_size=1024) as (server, client):
        with trio.testing.assert_no_checkpoints():
            for i in range(10):
                client.send_nowait(b"message %d;" % i)
            received = server.receive_nowait(1024)
        assert received == b"".join(b"message %d;" % i for i in range(10))


async def test_send_nowait_is_all_or_nothing(sim: SimulatedHost) -> None:
    async with pair(sim, read_size=1024) as (server, client):
        ring = client.buffer_space  # at least the 1024 asked for
        client.send_nowait(b"a" * (ring - 24))
        with pytest.raises(trio.WouldBlock):
            client.send_nowait(b"b" * 25)  # 24 bytes are free: none of it is written
        assert server.data_ready == ring - 24
        client.send_nowait(b"c" * 24)
        assert await server.receive_exactly(ring) == b"a" * (ring - 24) + b"c" * 24
        with pytest.raises(ValueError, match=f"cannot fit the {ring}-byte ring at once"):
            client.send_nowait(b"d" * (ring + 1))
        client.send_nowait(b"")  # nothing to send: never blocks


async def test_receive_nowait_would_block_then_ends(sim: SimulatedHost) -> None:
    async with pair(sim) as (server, client):
        with pytest.raises(trio.WouldBlock):
            server.receive_nowait()
        with pytest.raises(trio.WouldBlock):
            server.receive_into_nowait(bytearray(10))
        await client.send_all(b"last words")
        await client.aclose()
        assert server.receive_nowait(4) == b"last"
        buffer = bytearray(10)
        assert server.receive_into_nowait(buffer) == 6
        assert buffer[:6] == b" words"
        assert server.receive_nowait() == b""  # end of stream
        assert server.receive_into_nowait(buffer) == 0
        with pytest.raises(trio.BrokenResourceError, match="peer closed"):
            server.send_nowait(b"x")


async def test_nowait_calls_respect_a_task_already_using_the_direction(
    sim: SimulatedHost,
) -> None:
    async with pair(sim, read_size=1024, write_size=1024) as (server, client):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                server.receive_nowait()
            with pytest.raises(trio.BusyResourceError):
                server.receive_into_nowait(bytearray(1))
            await client.send_all(b"x")
        while client.buffer_space:  # fill the client's ring, then block a send_all on it
            client.send_nowait(b"y" * client.buffer_space)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"z")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                client.send_nowait(b"z")
            nursery.cancel_scope.cancel()
    with pytest.raises(trio.ClosedResourceError):
        client.send_nowait(b"after close")
    with pytest.raises(trio.ClosedResourceError):
        server.receive_nowait()


# -- receive_into ---------------------------------------------------------------------------------


async def test_receive_into_fills_any_writable_buffer(sim: SimulatedHost) -> None:
    async with pair(sim) as (server, client):
        await client.send_all(bytes(range(16)))
        numbers = array.array("I", [0, 0])  # 8 bytes, whatever the item size
        with trio.testing.assert_checkpoints():
            assert await server.receive_into(memoryview(numbers)) == 8
        assert numbers.tobytes() == bytes(range(8))
        buffer = bytearray(100)
        assert await server.receive_into(memoryview(buffer)[10:20]) == 8
        assert buffer[10:18] == bytes(range(8, 16))
        with pytest.raises(ValueError, match="read-only"):
            await server.receive_into(b"immutable")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="empty"):
            await server.receive_into(bytearray())
        await client.aclose()
        assert await server.receive_into(buffer) == 0  # end of stream


async def test_receive_into_waits_and_is_cancellable(sim: SimulatedHost) -> None:
    async with pair(sim) as (server, client):
        buffer = bytearray(10)
        with trio.move_on_after(0.1) as scope:
            await server.receive_into(buffer)
        assert scope.cancelled_caught
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"late")
            assert await server.receive_into(buffer) == 4


# -- receive_exactly ------------------------------------------------------------------------------


async def test_receive_exactly_waits_for_the_whole_count(sim: SimulatedHost) -> None:
    async with pair(sim) as (server, client), trio.open_nursery() as nursery:

        async def dribble() -> None:
            for piece in (b"he", b"ad", b"er", b"body"):
                await client.send_all(piece)
                await trio.sleep(0.01)

        nursery.start_soon(dribble)
        with trio.testing.assert_checkpoints():
            assert await server.receive_exactly(6) == b"header"
        assert await server.receive_exactly(4) == b"body"


async def test_receive_exactly_at_end_of_stream_says_how_much_arrived(
    sim: SimulatedHost,
) -> None:
    async with pair(sim) as (server, client):
        await client.send_all(b"half a message")
        await client.aclose()
        with pytest.raises(IncompleteReceiveError, match="after 14 of the 20 bytes") as caught:
            await server.receive_exactly(20)
        assert caught.value.partial == b"half a message"
        assert caught.value.expected == 20
        with pytest.raises(IncompleteReceiveError, match="after 0 of the 1 bytes"):
            await server.receive_exactly(1)
        assert await server.receive_some() == b""
        assert await server.receive_exactly(0) == b""  # an empty message, even now
        with pytest.raises(ValueError, match=">= 0"):
            await server.receive_exactly(-1)


async def test_cancelled_receive_exactly_leaves_the_bytes_in_the_ring(
    sim: SimulatedHost,
) -> None:
    async with pair(sim) as (server, client):
        await client.send_all(b"abc")
        with trio.move_on_after(0.1) as scope:
            await server.receive_exactly(10)
        assert scope.cancelled_caught
        assert server.data_ready == 3
        await client.send_all(b"defghij")
        assert await server.receive_exactly(10) == b"abcdefghij"


async def test_receive_exactly_beyond_the_ring_and_cancelled_midway_loses_nothing(
    sim: SimulatedHost,
) -> None:
    payload = bytes(i % 251 for i in range(10_000))
    async with pair(sim, read_size=1024) as (server, client):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, payload)
            assert await server.receive_exactly(len(payload)) == payload
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, payload[:5000])  # through a 1 KiB ring
            with trio.move_on_after(0.3) as scope:
                await server.receive_exactly(6000)  # 5000 will come: never completes
            assert scope.cancelled_caught
        assert server.data_ready == 5000  # what it took is kept for the next receive
        out_read, out_write = os.pipe()  # and comes first, whichever receive call is next
        try:
            got = bytearray(await server.receive_some(100))
            while len(got) < 5000:
                got += os.read(out_read, await server.receive_to_fd(out_write))
        finally:
            os.close(out_read)
            os.close(out_write)
        assert got == payload[:5000]


# -- between the ring and a file descriptor -------------------------------------------------------


async def test_a_file_through_the_ring_both_ways(sim: SimulatedHost, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    source, target = tmp_path / "in", tmp_path / "out"
    source.write_bytes(payload)
    async with pair(sim, read_size=4096, write_size=4096) as (server, client):
        inp = os.open(source, os.O_RDONLY)
        out = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            async with trio.open_nursery() as nursery:

                async def send() -> None:
                    sent = 0
                    while count := await client.send_from_fd(inp):
                        assert count <= 4096 // 4  # a quarter of the ring at a time
                        sent += count
                    assert sent == len(payload)
                    await client.aclose()

                nursery.start_soon(send)
                written = 0
                while count := await server.receive_to_fd(out):
                    assert count <= 4096 // 4
                    written += count
                assert written == len(payload)
        finally:
            os.close(inp)
            os.close(out)
    assert target.read_bytes() == payload


async def test_fd_calls_take_max_bytes_and_wait_on_nonblocking_pipes(sim: SimulatedHost) -> None:
    text = b"0123456789" * 100
    async with pair(sim, read_size=1024, write_size=1024) as (server, client):
        await _check_pipes(server, client, text)


async def _check_pipes(server: VchanStream, client: VchanStream, text: bytes) -> None:
    with trio.fail_after(10):  # a lost byte shows as a wait that never ends
        read_end, write_end = os.pipe()
        out_read, out_write = os.pipe()
        for fd in (read_end, write_end, out_read, out_write):
            os.set_blocking(fd, False)
        try:
            os.write(write_end, text)
            with trio.testing.assert_checkpoints():
                assert await client.send_from_fd(read_end, 700) == 700
            with trio.testing.assert_checkpoints():
                assert await server.receive_to_fd(out_write, 500) == 500
            assert os.read(out_read, 1000) == text[:500]
            async with trio.open_nursery() as nursery:

                async def send_rest() -> None:
                    # By default a quarter of the 1024-byte ring at a time.
                    assert await client.send_from_fd(read_end) == 256
                    assert await client.send_from_fd(read_end) == 44
                    assert await client.send_from_fd(read_end) == 0  # the writer closed

                nursery.start_soon(send_rest)
                await trio.testing.wait_all_tasks_blocked()  # the pipe is empty: it waits
                assert await server.receive_exactly(200) == text[500:700]
                await trio.testing.wait_all_tasks_blocked()
                os.close(write_end)
                write_end = -1
            assert await server.receive_exactly(300) == text[700:]
            with pytest.raises(OSError, match="Bad file descriptor"):
                await client.send_from_fd(write_end)  # -1: the stream stays usable
            await client.send_all(b"still usable")
            assert await server.receive_exactly(12) == b"still usable"
        finally:
            for fd in (read_end, write_end, out_read, out_write):
                if fd >= 0:
                    os.close(fd)


async def test_receive_to_fd_cancelled_on_a_full_pipe_loses_nothing(sim: SimulatedHost) -> None:
    payload = bytes(i % 251 for i in range(200_000))
    async with pair(sim, read_size=4096) as (server, client):
        out_read, out_write = os.pipe()
        os.set_blocking(out_write, False)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, payload)
                with trio.move_on_after(0.3):
                    while await server.receive_to_fd(out_write):  # until the pipe is full
                        pass
                got = bytearray()
                os.set_blocking(out_read, False)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        got += os.read(out_read, 1 << 20)  # what the pipe took
                assert 0 < len(got) < len(payload)
                while len(got) < len(payload):
                    got += await server.receive_some()
            assert got == payload
        finally:
            os.close(out_read)
            os.close(out_write)


async def test_closing_the_stream_ends_a_wait_on_a_descriptor(sim: SimulatedHost) -> None:
    async with pair(sim) as (_, client):
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        try:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:

                    async def send() -> None:
                        with pytest.raises(trio.ClosedResourceError, match="closed while"):
                            await client.send_from_fd(read_end)  # the pipe stays empty

                    nursery.start_soon(send)
                    await trio.testing.wait_all_tasks_blocked()
                    await client.aclose()
        finally:
            os.close(read_end)
            os.close(write_end)
