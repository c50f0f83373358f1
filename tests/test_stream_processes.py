"""Vchans between real processes on the simulated host: sizes, volume, close, crash, scale."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from vchan_peer import receive_exactly, send_pattern

import trio_vchan
from trio_vchan import VchanStream
from trio_vchan.sim import SimulatedHost

PEER = str(Path(__file__).with_name("vchan_peer.py"))
SERVER, CLIENT = 1, 2
MIB = 1 << 20

# ocaml-vchan's interesting sizes: 1024/2048/4096 pairs, flipped, and each minus one.
_PAIRS = [(1024, 2048), (2048, 1024), (1024, 4096), (4096, 1024), (2048, 4096), (4096, 4096)]
INTERESTING = sorted({(a - d, b - e) for a, b in _PAIRS for d in (0, 1) for e in (0, 1)})


@asynccontextmanager
async def peer(sim: SimulatedHost, domid: int, *args: str | int) -> AsyncIterator[trio.Process]:
    """Run vchan_peer.py as ``domid``; yields once it printed "connected"."""
    process = await trio.lowlevel.open_process(
        [sys.executable, PEER, *map(str, args)],
        env=os.environ | sim.environ(domid),
        stdout=-1,  # subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        assert process.stdout is not None
        await process.stdout.aclose()


async def read_line(process: trio.Process) -> str:
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await process.stdout.receive_some(1)
        if not chunk:
            raise EOFError(f"peer exited with {await process.wait()} after {line!r}")
        line += chunk
    return line.decode().strip()


@asynccontextmanager
async def serve_for_peer(
    sim: SimulatedHost, port: str, read_size: int = 65536, write_size: int = 65536
) -> AsyncIterator[VchanStream]:
    backend = sim.backend(SERVER)
    try:
        async with trio_vchan.serve(
            CLIENT, port, read_size=read_size, write_size=write_size, backend=backend
        ) as stream:
            yield stream
    finally:
        backend.close()


@pytest.mark.parametrize(("read_size", "write_size"), INTERESTING)
async def test_echo_across_processes_for_interesting_ring_sizes(
    sim: SimulatedHost, read_size: int, write_size: int
) -> None:
    payload = bytes(range(251)) * 80  # 20080 bytes: several times round every ring, unaligned
    with trio.fail_after(60):
        async with peer(sim, CLIENT, "connect", SERVER, "sizes", "echo") as process:
            async with serve_for_peer(sim, "sizes", read_size, write_size) as stream:
                assert await read_line(process) == "connected"
                received = bytearray()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream.send_all, payload)
                    while len(received) < len(payload):
                        received += await stream.receive_some()
                assert received == payload
            assert await process.wait() == 0


async def test_256_mib_each_way_at_once_with_checksums(sim: SimulatedHost) -> None:
    total = 256 * MIB
    with trio.fail_after(300):
        async with peer(sim, CLIENT, "connect", SERVER, "bulk", "exchange", total) as process:
            async with serve_for_peer(sim, "bulk", MIB, MIB) as stream:
                assert await read_line(process) == "connected"
                digests: dict[str, str] = {}

                async def send() -> None:
                    digests["sent"] = await send_pattern(stream, total)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    digests["received"] = await receive_exactly(stream, total)
                peer_sent, peer_received = (await read_line(process)).split()
                assert digests["received"] == peer_sent
                assert peer_received == digests["sent"]
            assert await process.wait() == 0


async def test_peer_closing_mid_transfer_delivers_everything_it_sent(sim: SimulatedHost) -> None:
    total = 5 * MIB + 12345
    with trio.fail_after(120):
        async with peer(sim, CLIENT, "connect", SERVER, "close", "send", total) as process:
            async with serve_for_peer(sim, "close", read_size=4096) as stream:
                assert await read_line(process) == "connected"
                digest = await receive_exactly(stream, total)
                assert await stream.receive_some() == b""  # the close, after the last byte
                assert digest == await read_line(process)
            assert await process.wait() == 0


@pytest.mark.parametrize("victim", ["client", "server"])
async def test_peer_killed_mid_transfer_is_detected(sim: SimulatedHost, victim: str) -> None:
    role: list[str | int] = ["connect", SERVER] if victim == "client" else ["serve", CLIENT]
    domid = CLIENT if victim == "client" else SERVER
    with trio.fail_after(60):
        async with peer(sim, domid, *role, "crash", "flood") as process:
            backend = sim.backend(SERVER if victim == "client" else CLIENT)
            try:
                if victim == "client":
                    stream_cm = trio_vchan.serve(CLIENT, "crash", backend=backend)
                else:
                    stream_cm = trio_vchan.connect(SERVER, "crash", backend=backend)
                async with stream_cm as stream:
                    assert await read_line(process) == "connected"
                    received = 0
                    while received < 3 * MIB:
                        received += len(await stream.receive_some())
                    process.send_signal(signal.SIGKILL)
                    # The host performs the dead process's unmap-notify: its live byte drops to 0
                    # and we are woken. What it wrote before dying is still delivered.
                    while await stream.receive_some():
                        pass
                    with pytest.raises(trio.BrokenResourceError):
                        await stream.send_all(b"anyone there?")
            finally:
                backend.close()
        assert process.returncode == -signal.SIGKILL


async def test_100_concurrent_connections_through_listeners(sim: SimulatedHost) -> None:
    """One process serves 100 vchans (10 client domains x 10 ports) while clients echo."""
    domains, ports = range(2, 12), [f"port{n}" for n in range(10)]
    server_backend = sim.backend(SERVER)
    client_backends = {d: sim.backend(d) for d in domains}
    payload = os.urandom(32768)
    payload_digest = hashlib.sha256(payload).hexdigest()
    checked = []

    async def handler(stream: VchanStream) -> None:
        async with stream:
            await stream.send_all(payload)
            assert await receive_exactly(stream, len(payload)) == payload_digest
            checked.append(stream.path)

    async def client(domid: int, port: str) -> None:
        async with trio_vchan.connect(SERVER, port, backend=client_backends[domid]) as stream:
            echoed = bytearray()
            while len(echoed) < len(payload):
                echoed += await stream.receive_some()
            await stream.send_all(echoed)
            assert await stream.receive_some() == b""

    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                listeners = [
                    trio_vchan.VchanListener(
                        d, p, read_size=4096, write_size=4096, backend=server_backend
                    )
                    for d in domains
                    for p in ports
                ]
                await nursery.start(trio.serve_listeners, handler, listeners)
                async with trio.open_nursery() as clients:
                    for d in domains:
                        for p in ports:
                            clients.start_soon(client, d, p)
                nursery.cancel_scope.cancel()
        assert len(set(checked)) == 100
    finally:
        server_backend.close()
        for backend in client_backends.values():
            backend.close()
