"""``trio-vchan sim``, run as ``python -m trio_vchan._sim_cli`` until ``__main__`` wires it in."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from sim_agent import agent
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
    async with running_host(where) as line:  # ends it with SIGTERM: status 0
        assert line == f"TRIO_VCHAN_SIM={where}\n".encode()
        assert (where / "host").is_socket()
    assert not where.exists()


@asynccontextmanager
async def running_host(where: Path) -> AsyncIterator[bytes]:
    """Run ``trio-vchan sim --dir where`` until the block ends (then SIGTERM it, and check it
    exits 0); yields the line it printed."""
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
        yield line
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(TIMEOUT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()


async def sim_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``trio-vchan sim ARGS``; return its exit status and standard error."""
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*CLI, *args], env=env, check=False, capture_stdout=True, capture_stderr=True
        )
    assert result.stdout == b""
    return result.returncode, result.stderr.decode()


async def test_destroy_a_domain_of_a_running_host(tmp_path: Path) -> None:
    where = tmp_path / "sim"

    def environ(domid: int) -> dict[str, str]:
        return {"TRIO_VCHAN_SIM": os.fspath(where), "TRIO_VCHAN_DOMID": str(domid)}

    async with running_host(where), agent(environ, 1) as dom1, agent(environ, 3) as dom3:
        channel = await dom1.call("bind_unbound", remote=3)
        await dom3.call("bind_interdomain", remote=1, port=channel["port"])
        assert (where / "domains" / "3").is_dir()

        assert await sim_cli("--dir", os.fspath(where), "--destroy", "3") == (0, "")
        await dom1.call("wait", id=channel["id"])
        assert (await dom1.call("peer_closed", id=channel["id"]))["peer_closed"]
        assert not (where / "domains" / "3").exists()
        reply = await dom3.try_call("bind_unbound", remote=1)
        assert reply["errno"] == errno.EPIPE, reply

        # TRIO_VCHAN_SIM names the host when --dir is not given
        env = {**os.environ, "TRIO_VCHAN_SIM": os.fspath(where)}
        status, stderr = await sim_cli("--destroy", "3", env=env)
        assert status == 1
        assert "cannot destroy domain 3: there is no domain 3 on this host" in stderr
        status, stderr = await sim_cli("--destroy", "0", env=env)
        assert status == 1, stderr
        assert "domain 0 cannot be destroyed" in stderr
        status, stderr = await sim_cli("--destroy", "1", "--", "true", env=env)
        assert status == 2, stderr
        assert "takes no COMMAND" in stderr
        await dom1.call("close", id=channel["id"])
        await dom3.exit()
        await dom1.exit()


async def test_destroy_without_a_host(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_VCHAN_")}
    status, stderr = await sim_cli("--destroy", "2", env=env)
    assert status == 2, stderr
    assert "needs --dir DIR or TRIO_VCHAN_SIM" in stderr
    status, stderr = await sim_cli("--dir", os.fspath(tmp_path), "--destroy", "2", env=env)
    assert status == 1, stderr
    assert "no simulated host is running at" in stderr
    for bad in ("02", "x", "40000"):
        status, stderr = await sim_cli("--dir", os.fspath(tmp_path), "--destroy", bad, env=env)
        assert status == 2, (bad, stderr)
        assert "DOMID" in stderr
