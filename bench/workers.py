"""The measured side of every benchmark: one process, one end of a stream.

    python bench/workers.py vchan serve|connect PEER_DOMID PORT SCENARIO [key=value ...]
    python bench/workers.py cvchan serve|connect PEER_DOMID PATH SCENARIO [key=value ...]
    python bench/workers.py socket FD SCENARIO [key=value ...]
    python bench/workers.py scale serve|connect PEER_DOMID SCENARIO count=N total=BYTES
        (serve also takes read_size= and write_size=, default 4 KiB and 64 KiB)
    python bench/workers.py setup serve PEER_DOMID PREFIX ports=N connections=N ring=BYTES
    python bench/workers.py setup sequential PEER_DOMID PREFIX warmup=N count=N
    python bench/workers.py setup concurrent PEER_DOMID PREFIX ports=N warmup=N rounds=N
    python bench/workers.py cvchan-setup serve|sequential|concurrent ... (the same, through
        bench/cvchan.py; PREFIX is a XenStore path prefix)

A vchan worker finds its simulated host in TRIO_VCHAN_SIM/TRIO_VCHAN_DOMID; a cvchan worker
(C libxenvchan through bench/cvchan.py) also needs tests/interop's shim preloaded and the
compiled wrapper's directory in BENCH_CVCHAN. A server takes its rings' minimum sizes as
``read_size=`` and ``write_size=`` (default 64 KiB each). Each scenario
prints one JSON object on stdout. Timing starts at the first byte received (or sent), so
process start-up and the handshake are not measured, except by the setup scenarios, which
measure the handshake (after warm-up connections that absorb process start-up).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio

import trio_vchan

Result = dict[str, Any]


#: The fds a process asks for: 10,000 vchans hold about 2 each in a domain's process and 6
#: in the host's.
FD_LIMIT = 1 << 17


def raise_fd_limit() -> int:
    """Raise this process's fd limit as far as :data:`FD_LIMIT`; return the limit it has.

    Beyond the hard limit only root may go (up to ``/proc/sys/fs/nr_open``); others get the
    hard limit.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FD_LIMIT:
        with contextlib.suppress(ValueError, OSError):  # not root, or above nr_open
            resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
            return FD_LIMIT
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- scenarios over any trio stream -----------------------------------------------------------


async def source(stream: trio.abc.Stream, total: int, write: int) -> Result:
    block = b"\xa5" * write
    # An empty vchan ring's free space is its size: what this end really writes into.
    space: int | None = getattr(stream, "buffer_space", None)
    ring = {"write_ring": space} if space is not None else {}
    start = time.perf_counter()
    for _ in range(total // write):
        await stream.send_all(block)
    return {"sent": total, "seconds": time.perf_counter() - start} | ring


async def sink(stream: trio.abc.Stream, total: int) -> Result:
    received, start = 0, 0.0
    while received < total:
        data = await stream.receive_some(1 << 20)
        if not data:
            raise EOFError(f"end of stream after {received} of {total} bytes")
        if not received:
            start = time.perf_counter()
        received += len(data)
    return {"received": received, "seconds": time.perf_counter() - start}


async def duplex(stream: trio.abc.Stream, total: int, write: int) -> Result:
    results: Result = {}

    async def send() -> None:
        results["send"] = await source(stream, total, write)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        results["receive"] = await sink(stream, total)
    return results


async def receive_exactly(stream: trio.abc.Stream, size: int) -> None:
    while size:
        data = await stream.receive_some(size)
        if not data:
            raise EOFError("end of stream in the middle of a message")
        size -= len(data)


async def ping(stream: trio.abc.Stream, count: int, size: int) -> Result:
    message = b"p" * size
    times = []
    for _ in range(count):
        start = time.perf_counter()
        await stream.send_all(message)
        await receive_exactly(stream, size)
        times.append(time.perf_counter() - start)
    return {"round_trips": times}


async def pong(stream: trio.abc.Stream, count: int, size: int) -> Result:
    message = b"p" * size
    for _ in range(count):
        await receive_exactly(stream, size)
        await stream.send_all(message)
    return {}


async def message_source(stream: trio_vchan.VchanStream, total: int, write: int) -> Result:
    """Whole messages without a scheduler pass each: send_nowait, and send_all only when the
    ring is full (a producer of many small messages)."""
    block = b"\xa5" * write
    start = time.perf_counter()
    for _ in range(total // write):
        try:
            stream.send_nowait(block)
        except trio.WouldBlock:
            await stream.send_all(block)
    return {"sent": total, "seconds": time.perf_counter() - start}


async def message_sink(stream: trio_vchan.VchanStream, total: int) -> Result:
    """Everything that has arrived into one reused buffer, waiting only when nothing has."""
    return await _sink_into(stream, total, nowait=True)


async def sink_into(stream: trio_vchan.VchanStream, total: int) -> Result:
    """The sink with one reused buffer (receive_into): no allocation per chunk."""
    return await _sink_into(stream, total, nowait=False)


async def _sink_into(stream: trio_vchan.VchanStream, total: int, nowait: bool) -> Result:
    buffer = bytearray(1 << 20)
    received, start = 0, 0.0
    while received < total:
        count = None
        if nowait:  # what has arrived, without a scheduler pass
            with contextlib.suppress(trio.WouldBlock):
                count = stream.receive_into_nowait(buffer)
        if count is None:
            count = await stream.receive_into(buffer)
        if not count:
            raise EOFError(f"end of stream after {received} of {total} bytes")
        if not received:
            start = time.perf_counter()
        received += count
    return {"received": received, "seconds": time.perf_counter() - start}


SCENARIOS: dict[str, Callable[..., Awaitable[Result]]] = {
    "source": source,
    "sink": sink,
    "message_source": message_source,
    "message_sink": message_sink,
    "sink_into": sink_into,
    "duplex": duplex,
    "ping": ping,
    "pong": pong,
}


# -- transports --------------------------------------------------------------------------------


#
# A vchan transport: (role, peer domid, port or path, its own parameters, popped from the
# scenario's) -> the stream, as an async context manager.

StreamOpener = Callable[[str, int, str, dict[str, Any]], AbstractAsyncContextManager[Any]]
DEFAULT_RING = 65536


@asynccontextmanager
async def open_vchan(
    role: str, peer: int, port: str, params: dict[str, Any]
) -> AsyncIterator[trio.abc.Stream]:
    """trio-vchan."""
    read_size = params.pop("read_size", DEFAULT_RING)
    write_size = params.pop("write_size", DEFAULT_RING)
    busy_poll = params.pop("busy_poll", 0.0)
    if role == "serve":
        vchan = trio_vchan.serve(peer, port, read_size=read_size, write_size=write_size)
    else:
        vchan = trio_vchan.connect(peer, port)
    async with vchan as stream:
        stream.busy_poll = busy_poll
        yield stream


@asynccontextmanager
async def open_cvchan(
    role: str, peer: int, path: str, params: dict[str, Any]
) -> AsyncIterator[trio.abc.Stream]:
    """C libxenvchan through the cffi wrapper (bench/cvchan.py)."""
    import cvchan

    native = cvchan.load(os.environ["BENCH_CVCHAN"])
    read_size = params.pop("read_size", DEFAULT_RING)
    write_size = params.pop("write_size", DEFAULT_RING)
    if role == "serve":
        vchan = cvchan.serve(native, peer, path, read_size, write_size)
    else:
        vchan = cvchan.connect(native, peer, path)
    async with vchan as stream:
        yield stream


VCHANS: dict[str, StreamOpener] = {"vchan": open_vchan, "cvchan": open_cvchan}


async def run_stream(stream_cm: Any, scenario: str, params: dict[str, int]) -> Result:
    async with stream_cm as stream:
        return await SCENARIOS[scenario](stream, **params)


# -- scale: many vchans in one process ----------------------------------------------------------


async def scale_serve(
    peer: int, count: int, total: int, read_size: int = 4096, write_size: int = 65536
) -> Result:
    """Accept ``count`` vchans from ``peer``, then send ``total // count`` bytes on each.

    Sending starts once every connection is up, so that the handshakes' XenStore traffic is
    not part of the measured transfer.
    """
    per_connection = total // count
    block = b"\x5a" * min(per_connection, 65536)  # scale_connect expects exactly this
    streams: list[trio_vchan.VchanStream] = []

    async def accept(port: str) -> None:
        listener = trio_vchan.VchanListener(peer, port, read_size=read_size, write_size=write_size)
        async with listener:
            streams.append(await listener.accept())

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(accept, f"scale{i}")

    async def send(stream: trio_vchan.VchanStream) -> None:
        for _ in range(per_connection // len(block)):
            await stream.send_all(block)

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(send, stream)
    # Closing is measured on its own (closes per second): on the simulated host each close
    # is a few requests to the host, which would stall the other transfers if interleaved.
    for stream in streams:
        await stream.aclose()
    return {}


async def scale_connect(peer: int, count: int, total: int) -> Result:
    """Connect ``count`` vchans at once, receive on all of them, then close them all."""
    rss0, fds0 = rss_bytes(), open_fds()
    streams: list[trio_vchan.VchanStream] = []
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:

        async def connect(i: int) -> None:
            streams.append(await trio_vchan.open_vchan_stream(peer, f"scale{i}"))

        for i in range(count):
            nursery.start_soon(connect, i)
    connected = time.perf_counter()
    rss1, fds1 = rss_bytes(), open_fds()
    received, first_byte = 0, 0.0

    block = min(total // count, 65536)
    expected = total // count // block * block  # what scale_serve sends on each

    async def drain(stream: trio_vchan.VchanStream) -> None:
        nonlocal received, first_byte
        left = expected
        while left:
            data = await stream.receive_some(1 << 20)
            if not data:
                raise EOFError(f"end of stream with {left} bytes still expected")
            first_byte = first_byte or time.perf_counter()
            received += len(data)
            left -= len(data)

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(drain, stream)
    transferred = time.perf_counter()
    for stream in streams:
        await stream.aclose()
    closed = time.perf_counter()
    return {
        "connects_per_second": count / (connected - start),
        "closes_per_second": count / (closed - transferred),
        "aggregate_bytes_per_second": received / (transferred - first_byte),
        "received": received,
        "rss_per_connection": (rss1 - rss0) / count,
        "fds_per_connection": (fds1 - fds0) / count,
    }


# -- setup: connect, one byte each way, close ---------------------------------------------------
#
# The same scenarios as tests/interop/vchan_setup.c runs on C libxenvchan (bench/run.py pairs
# them): a server that keeps listening, a client connecting again and again, and many of both.
# The clients take the transport's connect(peer, port); the servers differ: trio-vchan keeps
# a listener, libxenvchan (and so the wrapper) serves one connection per server_init.

Connect = Callable[[int, str], AbstractAsyncContextManager[trio.abc.Stream]]


async def echo_one_byte(stream: trio.abc.Stream) -> None:
    byte = await stream.receive_some(1)
    if not byte:
        raise EOFError("the client closed before sending its byte")
    await stream.send_all(byte)


async def setup_serve(peer: int, prefix: str, ports: int, connections: int, ring: int) -> Result:
    """Listen on ports ``prefix0 ..``; on each, serve ``connections`` one after the other.

    Each connection: receive one byte, send it back, close.
    """

    async def listen(port: str) -> None:
        async with trio_vchan.VchanListener(
            peer, port, read_size=ring, write_size=ring
        ) as listener:
            for _ in range(connections):
                async with await listener.accept() as stream:
                    await echo_one_byte(stream)

    async with trio.open_nursery() as nursery:
        for i in range(ports):
            nursery.start_soon(listen, f"{prefix}{i}")
    return {"served": ports * connections}


async def cvchan_setup_serve(
    peer: int, prefix: str, ports: int, connections: int, ring: int
) -> Result:
    """:func:`setup_serve` through the wrapper: a libxenvchan server per connection."""
    import cvchan

    native = cvchan.load(os.environ["BENCH_CVCHAN"])

    async def listen(path: str) -> None:
        for _ in range(connections):
            async with cvchan.serve(native, peer, path, ring, ring) as stream:
                await echo_one_byte(stream)

    async with trio.open_nursery() as nursery:
        for i in range(ports):
            nursery.start_soon(listen, f"{prefix}{i}")
    return {"served": ports * connections}


async def one_setup(connect: Connect, peer: int, port: str) -> None:
    """Connect, send one byte, receive it back, close."""
    async with connect(peer, port) as stream:
        await stream.send_all(b"x")
        echo = await stream.receive_some(1)
        if echo != b"x":
            raise EOFError(f"the echo was {echo!r}, not b'x'")


async def setup_sequential(
    connect: Connect, peer: int, prefix: str, warmup: int, count: int
) -> Result:
    """``warmup`` untimed connections on port ``prefix0``, then ``count`` timed ones."""
    port = f"{prefix}0"
    for _ in range(warmup):
        await one_setup(connect, peer, port)
    latencies = []
    start = time.perf_counter()
    for _ in range(count):
        begin = time.perf_counter()
        await one_setup(connect, peer, port)
        latencies.append(time.perf_counter() - begin)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "connections": count, "retries": 0, "latencies": latencies}


async def setup_concurrent(
    connect: Connect, peer: int, prefix: str, ports: int, warmup: int, rounds: int
) -> Result:
    """Rounds of one connection on each of ``ports`` ports at once; ``warmup`` untimed."""
    seconds = 0.0
    for round_number in range(warmup + rounds):
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(ports):
                nursery.start_soon(one_setup, connect, peer, f"{prefix}{i}")
        if round_number >= warmup:
            seconds += time.perf_counter() - start
    return {"seconds": seconds, "connections": ports * rounds, "retries": 0}


def parse(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        params[key] = int(value) if value.isdecimal() else float(value)
    return params


async def main(argv: list[str]) -> Result:
    raise_fd_limit()
    kind = argv[0]
    if kind in VCHANS:
        role, peer, port, scenario = argv[1], int(argv[2]), argv[3], argv[4]
        params = parse(argv[5:])
        opened = VCHANS[kind](role, peer, port, params)
        return await run_stream(opened, scenario, params)
    if kind == "socket":
        fd, scenario, params = int(argv[1]), argv[2], parse(argv[3:])
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
        return await run_stream(stream, scenario, params)
    if kind == "scale":
        role, peer, params = argv[1], int(argv[2]), parse(argv[4:])
        return await (scale_serve if role == "serve" else scale_connect)(peer, **params)
    if kind in ("setup", "cvchan-setup"):
        role, peer, prefix, params = argv[1], int(argv[2]), argv[3], parse(argv[4:])
        if role == "serve":
            serve = setup_serve if kind == "setup" else cvchan_setup_serve
            return await serve(peer, prefix, **params)
        connect: Connect = trio_vchan.connect
        if kind == "cvchan-setup":
            import cvchan

            connect = functools.partial(cvchan.connect, cvchan.load(os.environ["BENCH_CVCHAN"]))
        clients: dict[str, Callable[..., Awaitable[Result]]] = {
            "sequential": setup_sequential,
            "concurrent": setup_concurrent,
        }
        return await clients[role](connect, peer, prefix, **params)
    raise SystemExit(f"unknown worker kind {kind!r}")


if __name__ == "__main__":
    print(json.dumps(trio.run(main, sys.argv[1:])), flush=True)
