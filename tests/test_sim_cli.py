"""``trio-vchan sim``, run as ``python -m trio_vchan._sim_cli`` until ``__main__`` wires it in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio
from subprocess_paths import SAFE_PATH

TIMEOUT = 60
CLI = [sys.executable, *SAFE_PATH, "-m", "trio_vchan._sim_cli"]

CHILD = """
import os, sys
from trio_vchan.sim import backend_from_environ
backend = backend_from_environ()
share = backend.memory.share(0, 1)
share.close()
backend.close()
print(os.environ["TRIO_VCHAN_SIM"], backend.domid)
sys.exit(3)
"""


async def test_runs_a_command_inside_a_host() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_VCHAN_")}
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*CLI, "--", sys.executable, *SAFE_PATH, "-c", CHILD],
            env=env,
            check=False,
            capture_stdout=True,
        )
    assert result.returncode == 3
    directory, domid = result.stdout.decode().split()
    assert domid == "0"
    assert not await trio.Path(directory).exists()


async def test_command_keeps_its_domid() -> None:
    env = {**os.environ, "TRIO_VCHAN_DOMID": "7"}
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*CLI, "--", sys.executable, *SAFE_PATH, "-c", CHILD],
            env=env,
            check=False,
            capture_stdout=True,
        )
    assert result.returncode == 3
    assert result.stdout.split()[1] == b"7"


async def test_runs_until_terminated(tmp_path: Path) -> None:
    where = tmp_path / "sim"
    process = await trio.lowlevel.open_process(
        [*CLI, "--dir", os.fspath(where)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        line = b""
        with trio.fail_after(TIMEOUT):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, "the host exited early"
                line += chunk
        assert line == f"TRIO_VCHAN_SIM={where}\n".encode()
        assert (where / "host").is_socket()
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(TIMEOUT):
            assert await process.wait() == 0
        assert not where.exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()
