"""The examples run as real processes in domains of a simulated host."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

import trio_vchan
from trio_vchan.sim import SimulatedHost

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


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


def test_the_tests_of_the_echo_server_pass_as_a_user_runs_them(pytester: pytest.Pytester) -> None:
    """examples/test_echo_server.py, which the tutorial shows, under a configuration of its
    own: no trio_mode (its trio marker does that), the fixture from the installed plugin."""
    ini = pytester.makeini("[pytest]\naddopts = --strict-markers\nfilterwarnings = error\n")
    result = pytester.runpytest_subprocess(
        str(EXAMPLES / "test_echo_server.py"), "-c", str(ini), "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize("example", ["echo_server.py", "file_transfer.py"])
async def test_without_arguments_an_example_prints_its_usage(example: str) -> None:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, str(EXAMPLES / example)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 2
    stderr = done.stderr.decode()
    assert stderr.startswith(f"usage: {example} [-h] ")
    assert "the following arguments are required" in stderr
    assert "Traceback" not in stderr


def test_a_script_beside_a_source_tree_without_its_native_part_says_so(tmp_path: Path) -> None:
    """A user saves server.py in the clone's root and runs it: Python imports the source tree's
    trio_vchan, which has no compiled ``_native`` unless it was installed in place."""
    shutil.copytree(
        REPO / "trio_vchan",
        tmp_path / "trio_vchan",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    assert [p.name for p in (tmp_path / "trio_vchan").glob("_native*")] == ["_native.pyi"]
    shutil.copy(EXAMPLES / "echo_server.py", tmp_path / "server.py")
    # -S: no .pth files, so that an editable install's import hook cannot find the missing
    # module in the real tree; PYTHONPATH gives back trio and the other dependencies.
    path = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
    done = subprocess.run(
        [sys.executable, "-S", "server.py", "echo", "2"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    last_line = done.stderr.decode().strip().splitlines()[-1]
    assert last_line.startswith(
        "ImportError: trio_vchan's native part (trio_vchan._native) is not built in"
        f" {tmp_path / 'trio_vchan'}: "
    )
    assert "`pip install .`" in last_line
    assert "run from outside the source tree" in last_line
    assert "circular import" not in done.stderr.decode()
