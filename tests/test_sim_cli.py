"""``trio-vchan sim``, run as ``python -m trio_vchan sim``."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from sim_agent import agent
from subprocess_paths import SAFE_PATH

from trio_vchan._cli._sim import _host_pid

TIMEOUT = 60
CLI = [sys.executable, *SAFE_PATH, "-m", "trio_vchan", "sim"]

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


async def receive_until(stream: trio.abc.ReceiveStream, end: bytes, early: str) -> bytes:
    """What ``stream`` gives up to ``end`` (within TIMEOUT); ``early`` if it ends first."""
    received = b""
    with trio.fail_after(TIMEOUT):
        while not received.endswith(end):
            chunk = await stream.receive_some()
            assert chunk, early
            received += chunk
    return received


@asynccontextmanager
async def running_host(where: Path) -> AsyncIterator[bytes]:
    """Run ``trio-vchan sim --dir where`` until the block ends (then SIGTERM it, and check it
    exits 0); yields the line it printed."""
    process = await trio.lowlevel.open_process(
        [*CLI, "--dir", os.fspath(where)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        yield await receive_until(process.stdout, b"\n", "the host exited early")
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


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without a host, a domain or a XenStore of its own, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TRIO_VCHAN_") and k != "XENSTORED_PATH"
    }
    return {**env, **extra}


def one_line(stderr: str) -> str:
    """``stderr`` must be one line, and no traceback."""
    assert stderr.count("\n") == 1, stderr
    assert stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr
    return stderr


async def test_refuses_a_directory_it_cannot_use(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine").write_text("keep me")
    status, stderr = await sim_cli("--dir", os.fspath(full))
    assert status == 2
    assert f"{full} is not empty; empty or remove it, or choose another --dir" in one_line(stderr)
    assert (full / "mine").read_text() == "keep me"

    a_file = tmp_path / "file"
    a_file.write_text("")
    status, stderr = await sim_cli("--dir", os.fspath(a_file))
    assert status == 2
    assert f"{a_file} exists and is not a directory; choose another --dir" in one_line(stderr)

    missing_parent = tmp_path / "no" / "such"
    status, stderr = await sim_cli("--dir", os.fspath(missing_parent))
    assert status == 2
    assert "No such file or directory; choose another --dir" in one_line(stderr)


async def test_refuses_a_directory_in_use(tmp_path: Path) -> None:
    where = tmp_path / "sim"
    async with running_host(where):
        for extra in ([], ["--background"]):
            status, stderr = await sim_cli("--dir", os.fspath(where), *extra)
            assert status == 2, extra
            assert f"a simulated host is already running at {where}; stop it" in one_line(stderr)
        assert (where / "host").is_socket()  # the running host still has its directory


async def start_host(where: Path) -> trio.Process:
    """Start ``trio-vchan sim --dir where`` and wait until it has printed its line."""
    process = await trio.lowlevel.open_process(
        [*CLI, "--dir", os.fspath(where)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    async with process.stdout:
        await receive_until(process.stdout, b"\n", "the host exited early")
    return process


async def test_recognises_a_directory_left_by_a_killed_host(tmp_path: Path) -> None:
    where = tmp_path / "sim"
    process = await start_host(where)
    process.kill()
    with trio.fail_after(TIMEOUT):
        await process.wait()
    assert (where / "host").is_socket()  # SIGKILL: no chance to clean up
    hint = f"{where} was left by a host that is no longer running; remove it (rm -r {where})"
    status, stderr = await sim_cli("--dir", os.fspath(where))
    assert status == 2
    assert hint + " or choose another --dir" in one_line(stderr)
    status, stderr = await sim_cli("--dir", os.fspath(where), "--stop")
    assert status == 1
    assert hint in one_line(stderr)
    assert (where / "host").is_socket()  # reported, not removed


async def test_keeps_the_mode_of_an_existing_directory(tmp_path: Path) -> None:
    where = tmp_path / "mine"
    where.mkdir()
    where.chmod(0o755)
    show_mode = "import os; print(oct(os.stat(os.environ['TRIO_VCHAN_SIM']).st_mode & 0o777))"
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*CLI, "--dir", os.fspath(where), "--", sys.executable, "-c", show_mode],
            env=clean_env(),
            capture_stdout=True,
        )
    assert result.stdout == b"0o755\n"
    assert where.is_dir()  # emptied, not removed: it was the user's
    assert list(where.iterdir()) == []
    assert where.stat().st_mode & 0o777 == 0o755


@pytest.mark.skipif(
    shutil.which("xenstore-read") is None,
    reason="needs Debian's xenstore-utils (xenstore-read) on PATH",
)
@pytest.mark.parametrize("domid", [None, "5"])
async def test_xen_tools_work_inside_a_host(domid: str | None) -> None:
    env = clean_env() if domid is None else clean_env(TRIO_VCHAN_DOMID=domid)
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*CLI, "--", "xenstore-read", "domid"],
            env=env,
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == f"{domid or 0}\n".encode()


def parse_exports(text: str) -> dict[str, str]:
    """The variables of ``export NAME=VALUE`` lines (values shell-quoted)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert len(words) == 2, line
        assert words[0] == "export", line
        name, _, value = words[1].partition("=")
        found[name] = value
    return found


@pytest.mark.parametrize("domid_from", ["environ", "option"])
async def test_background_host_start_use_stop(tmp_path: Path, domid_from: str) -> None:
    """Domain 4 from TRIO_VCHAN_DOMID, or from --domid (which wins over the variable)."""
    where = tmp_path / "sim"
    option = ["--domid", "4"] if domid_from == "option" else []
    with trio.fail_after(TIMEOUT):  # returns although the host runs on (and holds no pipe)
        result = await trio.run_process(
            [*CLI, "--dir", os.fspath(where), "--background", *option],
            env=clean_env(TRIO_VCHAN_DOMID="9" if option else "4"),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    try:
        assert (result.returncode, result.stderr) == (0, b"")
        exports = parse_exports(result.stdout.decode())
        xenstore = os.fspath(where / "domains" / "4" / "xenstore")
        assert exports == {
            "TRIO_VCHAN_SIM": os.fspath(where),
            "TRIO_VCHAN_DOMID": "4",
            "XENSTORED_PATH": xenstore,
        }
        assert (where / "domains" / "4" / "xenstore").is_socket()  # domain 4 exists already
        pid = _host_pid(where)
        assert os.getsid(pid) != os.getsid(0)  # detached: a session of its own

        # use it: a process joins with the exported variables, twice (the host runs on)
        for _ in range(2):
            with trio.fail_after(TIMEOUT):
                joined = await trio.run_process(
                    [sys.executable, *SAFE_PATH, "-c", CHILD],
                    env=clean_env(**exports),
                    check=False,
                    capture_stdout=True,
                )
            assert joined.returncode == 3
            assert joined.stdout.decode().split() == [os.fspath(where), "4"]

        assert await sim_cli("--dir", os.fspath(where), "--stop") == (0, "")
        assert not where.exists()  # --stop returned after the host had cleaned up
        status, stderr = await sim_cli("--dir", os.fspath(where), "--stop")
        assert status == 1
        assert f"no simulated host is running at {where}" in one_line(stderr)
    finally:
        if (where / "host").is_socket():
            await sim_cli("--dir", os.fspath(where), "--stop")


async def test_background_passes_on_why_the_host_did_not_start(tmp_path: Path) -> None:
    too_long = tmp_path / ("x" * 120)  # fine as a directory, too long for socket paths
    status, stderr = await sim_cli("--dir", os.fspath(too_long), "--background")
    assert status == 2
    assert "is too long for Unix socket paths" in one_line(stderr)
    assert not too_long.exists()


async def test_stop_waits_until_the_host_has_stopped(tmp_path: Path) -> None:
    where = tmp_path / "sim"
    env = clean_env(TRIO_VCHAN_SIM=os.fspath(where))
    stubborn = "trap '' TERM; echo started; while :; do sleep 1; done"  # ignores SIGTERM
    process = await trio.lowlevel.open_process(
        [*CLI, "--dir", os.fspath(where), "--", "sh", "-c", stubborn],
        env=clean_env(),
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with process.stdout:
            with trio.fail_after(TIMEOUT):
                assert await process.stdout.receive_some() == b"started\n"
        assert await sim_cli("--stop", env=env) == (0, "")  # TRIO_VCHAN_SIM names the host
        # the host had killed COMMAND after the grace, and exited, before --stop returned
        assert process.returncode == 128 + signal.SIGKILL
        assert not where.exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    status, stderr = await sim_cli("--stop", env=clean_env())
    assert status == 2
    assert "--stop needs --dir DIR or TRIO_VCHAN_SIM" in one_line(stderr)
    for action in ("--stop", "--background"):
        status, stderr = await sim_cli(action, "--", "true", env=env)
        assert status == 2
        assert f"{action} takes no COMMAND" in one_line(stderr)


# A background job that holds the standard output pipe: reading that pipe to its end
# finishes only once every process of COMMAND's group has exited.
STRAY = "sleep 1000 & echo started"


@pytest.mark.parametrize("shell", [STRAY, f"trap '' TERM; {STRAY}"], ids=["plain", "ignores-term"])
async def test_background_jobs_end_with_the_command(shell: str) -> None:
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*CLI, "--", "sh", "-c", shell], env=clean_env(), capture_stdout=True
        )
    assert result.stdout == b"started\n"


async def test_background_jobs_end_with_the_host() -> None:
    process = await trio.lowlevel.open_process(
        [*CLI, "--", "sh", "-c", f"{STRAY}; wait"], env=clean_env(), stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        async with process.stdout:
            output = await receive_until(process.stdout, b"started\n", "the command ended early")
            with trio.fail_after(TIMEOUT):
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 128 + signal.SIGTERM  # sh's own end
                while chunk := await process.stdout.receive_some():  # the job's end, too
                    output += chunk
        assert output == b"started\n"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


NAMES_CHILD = """
import os, trio
from trio_vchan.sim import ENV_DOMID, backend_from_environ
from trio_vchan._xenstore import XenStoreClient
backend_from_environ({**os.environ, ENV_DOMID: "3"}).close()  # domain 3 comes to be
async def main():
    backend = backend_from_environ()
    async with XenStoreClient(await backend.connect_xenstore()) as xs:
        for domid in (0, 3):
            print((await xs.read(f"/local/domain/{domid}/name")).decode())
    backend.close()
trio.run(main)
"""


PORTS_CHILD = """
from trio_vchan.sim import backend_from_environ
backend = backend_from_environ()
ports = [backend.events.bind_unbound(0) for _ in range(3)]
try:
    backend.events.bind_unbound(0)
except OSError as exc:
    print(exc.strerror)
"""


CHILD_COMMAND = [sys.executable, *SAFE_PATH, "-c", PORTS_CHILD]


async def test_max_event_channels_limits_each_domain() -> None:
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*CLI, "--max-event-channels", "3", "--domid", "1", "--", *CHILD_COMMAND],
            env=clean_env(),
            capture_stdout=True,
        )
    # The fourth bind is refused with the host's reason (three succeeded first).
    assert result.stdout.decode().strip().endswith(": domain 1 has all its 3 event channels open")


async def test_domains_are_named_with_name() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_VCHAN_")}
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*CLI, "--name", "3=web", "--", sys.executable, *SAFE_PATH, "-c", NAMES_CHILD],
            env=env,
            capture_stdout=True,
        )
    assert result.stdout.decode().split() == ["Domain-0", "web"]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["3"], "expected DOMID=NAME"),
        (["3=12"], "all digits"),
        (["3=a/b"], "printable ASCII without spaces or /"),
        (["3="], "1 to 64 characters"),
        (["x=web"], "decimal domain id"),
        (["3=web", "4=web"], "'web' is domain 3's already"),
        (["3=Domain-0"], "'Domain-0' is domain 0's already"),
        (["3=a", "3=b"], "domain 3 is named twice"),
    ],
)
async def test_bad_names_are_refused(names: list[str], message: str) -> None:
    args = [arg for name in names for arg in ("--name", name)]
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*CLI, *args, "--", "true"], check=False, capture_stderr=True
        )
    assert result.returncode == 2
    assert message in result.stderr.decode()


# -- --domid, --join and --xen-libs ------------------------------------------------------------

SHOW_ENV = (
    "import os, sys; print(*(os.environ.get(k, '-') for k in ('TRIO_VCHAN_SIM', "
    "'TRIO_VCHAN_DOMID', 'XENSTORED_PATH', 'LD_PRELOAD'))); sys.exit(3)"
)


async def test_join_runs_a_command_as_a_domain_of_a_running_host(tmp_path: Path) -> None:
    """The domain is created; the command gets the host, its domain and its XenStore, and
    trio-vchan becomes it (its status, and no LD_PRELOAD without --xen-libs)."""
    where = tmp_path / "sim"
    async with running_host(where):
        assert not (where / "domains" / "4").exists()
        join = [*CLI, "--join", "--dir", os.fspath(where), "--domid", "4", "--"]
        with trio.fail_after(TIMEOUT):
            result = await trio.run_process(
                [*join, sys.executable, *SAFE_PATH, "-c", SHOW_ENV],
                env=clean_env(TRIO_VCHAN_DOMID="9", XENSTORED_PATH="/elsewhere"),
                check=False,
                capture_stdout=True,
            )
        assert (where / "domains" / "4" / "platform").is_socket()
    assert result.returncode == 3
    assert result.stdout.decode().split() == [
        os.fspath(where),
        "4",
        os.fspath(where / "domains" / "4" / "xenstore"),
        os.environ.get("LD_PRELOAD", "-"),
    ]


async def test_xen_libs_preload_the_shim_before_an_inherited_preload() -> None:
    from trio_vchan._xenshim import SHIM, XCSTUB

    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*CLI, "--domid", "2", "--xen-libs", "--", sys.executable, *SAFE_PATH, "-c", SHOW_ENV],
            env=clean_env(LD_PRELOAD="libc.so.6"),
            check=False,
            capture_stdout=True,
        )
    assert result.returncode == 3
    words = result.stdout.decode().split()
    assert words[1:3] == ["2", os.fspath(Path(words[0]) / "domains" / "2" / "xenstore")]
    assert words[3] == f"{SHIM}:{XCSTUB}:libc.so.6"


@pytest.mark.parametrize(
    ("args", "env", "status", "message"),
    [
        (["--join", "--", "true"], {}, 2, "--join needs --dir DIR or TRIO_VCHAN_SIM"),
        (["--join", "--dir", "{nowhere}", "--", "true"], {}, 1, "no simulated host is running"),
        (["--join"], {"TRIO_VCHAN_SIM": "{host}"}, 2, "--join needs a COMMAND"),
        (["--join", "--name", "1=a", "--", "true"], {}, 2, "--name names the domains"),
        (
            ["--join", "--max-event-channels", "9", "--", "true"],
            {"TRIO_VCHAN_SIM": "{host}"},
            2,
            "--max-event-channels configures a host being started",
        ),
        (["--max-event-channels", "0", "--", "true"], {}, 2, "must be 1 to 131072"),
        (["--background", "--max-event-channels", "131073"], {}, 2, "must be 1 to 131072"),
        (
            ["--join", "--", "true"],
            {"TRIO_VCHAN_SIM": "{host}", "TRIO_VCHAN_DOMID": "x"},
            2,
            "TRIO_VCHAN_DOMID must be a decimal domain id, not 'x'",
        ),
        (
            ["--join", "--", "no-such-program"],
            {"TRIO_VCHAN_SIM": "{host}"},
            127,
            "cannot run 'no-such-program'",
        ),
        (["--xen-libs", "--", "no-such-program"], {}, 127, "cannot run 'no-such-program'"),
        (["--xen-libs"], {}, 2, "--xen-libs preloads the shim into a COMMAND"),
        (["--background", "--xen-libs"], {}, 2, "--xen-libs preloads the shim into a COMMAND"),
        (["--domid", "3"], {}, 2, "--domid is the domain of COMMAND"),
        (["--domid", "32752", "--", "true"], {}, 2, "domid must be 0..32751, not 32752"),
        (["--domid", "two", "--", "true"], {}, 2, "a domain id is a decimal number"),
    ],
)
async def test_join_and_xen_libs_errors(
    tmp_path: Path, args: list[str], env: dict[str, str], status: int, message: str
) -> None:
    where = tmp_path / "sim"
    names = {"host": os.fspath(where), "nowhere": os.fspath(tmp_path / "none")}
    args = [arg.format(**names) for arg in args]
    env = {k: v.format(**names) for k, v in env.items()}
    async with running_host(where):
        got, stderr = await sim_cli(*args, env=clean_env(**env))
    assert got == status, stderr
    assert message in (stderr if "usage:" in stderr else one_line(stderr))


def test_xen_libs_say_when_the_shim_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trio_vchan import _xenshim
    from trio_vchan._cli._main import main

    monkeypatch.setattr(_xenshim, "SHIM", tmp_path / "libtrio-vchan-xenshim.so")
    assert main(["sim", "--xen-libs", "--", "true"]) == 127
    stderr = capsys.readouterr().err
    assert "trio-vchan sim: --xen-libs: libtrio-vchan-xenshim.so is not in" in stderr
    assert "install gcc and reinstall trio-vchan" in stderr
