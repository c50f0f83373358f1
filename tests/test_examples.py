"""The examples run as real processes in domains of a simulated host."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

import trio
import trio.testing

import trio_vchan
from trio_vchan.sim import SimulatedHost

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_echo_server_serves_several_domains_and_reconnects(sim: SimulatedHost) -> None:
    server = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLES / "echo_server.py"), "echo", "2", "3"],
        env=os.environ | sim.environ(1),
        stdout=-1,
    )
    backends = {d: sim.backend(d) for d in (2, 3)}
    try:
        with trio.fail_after(60):
            assert server.stdout is not None
            banner = await server.stdout.receive_some()
            assert b"echoing on 'echo' for domains [2, 3]" in banner

            async def client(domid: int, message: bytes) -> None:
                async with trio_vchan.connect(1, "echo", backend=backends[domid]) as stream:
                    await stream.send_all(message)
                    echoed = b""
                    while len(echoed) < len(message):
                        echoed += await stream.receive_some()
                    assert echoed == message

            for round_ in range(2):  # the second round reconnects to fresh endpoints
                async with trio.open_nursery() as nursery:
                    for domid in backends:
                        nursery.start_soon(client, domid, f"{domid}/{round_}".encode() * 5000)
    finally:
        server.send_signal(signal.SIGINT)  # a clean stop withdraws the advertisements
        with trio.fail_after(30):
            assert await server.wait() == 0
        assert server.stdout is not None
        await server.stdout.aclose()
        for backend in backends.values():
            backend.close()


async def test_file_transfer_arrives_intact(sim: SimulatedHost, tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    payload = os.urandom(3 << 20) + b"tail"
    source.write_bytes(payload)
    script = str(EXAMPLES / "file_transfer.py")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            results: dict[str, bytes] = {}

            async def run(name: str, domid: int, args: list[str]) -> None:
                done = await trio.run_process(
                    [sys.executable, script, *args],
                    env=os.environ | sim.environ(domid),
                    capture_stdout=True,
                )
                results[name] = done.stdout.strip()

            nursery.start_soon(run, "sender", 1, ["send", "2", "files", str(source)])
            nursery.start_soon(run, "receiver", 2, ["receive", "1", "files", str(target)])
    expected = hashlib.sha256(payload).hexdigest().encode()
    assert results == {"sender": expected, "receiver": expected}
    assert target.read_bytes() == payload
