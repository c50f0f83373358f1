"""``vchan-socket-proxy``, trio-vchan's and Xen's C program, side by side on a simulated host.

Each behaviour test runs twice: with ``trio-vchan vchan-socket-proxy`` (the drop-in) and with
Xen's own ``vchan-socket-proxy`` from Debian's xen-utils (run through the interop shim, see
``tests/test_interop_c.py``), with the same arguments, and expects the same. The arguments
have the shapes libxl gives them (``tools/libs/light/libxl_dm.c``): ``--state-path=...``, the
stub domain's id, an absolute vchan path, and the QMP socket path. The vchan peer is trio-vchan
in this process.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
import trio
from subprocess_paths import SAFE_PATH
from test_interop_c import socket_proxy, tools  # noqa: F401  (fixtures)

from trio_vchan import VchanListener, VchanStream, connect
from trio_vchan._xenstore import XenStoreClient
from trio_vchan._xs_wire import Access, Permission
from trio_vchan.sim import ENV_DIR, ENV_DOMID, SimulatedHost

TIMEOUT: Final = 60
TOOLSTACK: Final = 0
STUBDOM: Final = 3  # the device model's domain
GUEST: Final = 2
DEVICE_MODEL: Final = f"/local/domain/{STUBDOM}/device-model/{GUEST}"
QMP_VCHAN: Final = f"{DEVICE_MODEL}/qmp-vchan"
STATE_PATH: Final = f"/local/domain/{TOOLSTACK}/device-model/{STUBDOM}/qmp-proxy-state"
#: How a process that SIGTERM ended reports it: the C program dies of it, trio-vchan exits 143.
SIGTERMED: Final = (-signal.SIGTERM, 128 + signal.SIGTERM)

Command = Callable[[int, Sequence[str]], tuple[list[str], dict[str, str]]]


@pytest.fixture(params=["trio", "c"])
async def proxy(request: pytest.FixtureRequest, sim: SimulatedHost) -> AsyncIterator[Command]:
    """How to run ``vchan-socket-proxy ARGS`` as domain N: (argv, environment).

    The C program, as server, leaves its advertisement in XenStore when it exits other than
    through its main loop's end (libxenvchan removes it only in libxenvchan_close()): that is
    removed after its tests, so that the host's leak check sees trio-vchan's leftovers only.
    As libxl, the toolstack makes the stub domain's ``device-model/<guest>`` directory, owned
    by the stub domain, and removes it (and the state path) after.
    """
    for domid in (TOOLSTACK, GUEST, STUBDOM):
        sim.add_domain(domid)
    async with dom0_store(sim) as xs:
        await xs.mkdir(DEVICE_MODEL)
        await xs.set_perms(DEVICE_MODEL, [Permission(Access.NONE, STUBDOM)])
    async with _commands(request, sim) as command:
        yield command
    async with dom0_store(sim) as xs:
        if request.param == "trio":
            assert await xs.directory(DEVICE_MODEL) == []  # trio-vchan withdrew everything
        await xs.rm(f"/local/domain/{STUBDOM}/device-model")
        await xs.rm(f"/local/domain/{TOOLSTACK}/device-model")


@asynccontextmanager
async def _commands(request: pytest.FixtureRequest, sim: SimulatedHost) -> AsyncIterator[Command]:
    if request.param == "trio":
        base = {k: v for k, v in os.environ.items() if k not in (ENV_DIR, ENV_DOMID)}

        def trio_command(domid: int, args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
            argv = [sys.executable, *SAFE_PATH, "-m", "trio_vchan", "vchan-socket-proxy", *args]
            return argv, {**base, **sim.environ(domid)}

        yield trio_command
        return
    built = request.getfixturevalue("tools")
    program = request.getfixturevalue("socket_proxy")

    def c_command(domid: int, args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        client = "server" not in args and "--mode=server" not in args
        return [str(program), *args], built.environ(sim.environ(domid), xenctrl=client)

    yield c_command


@asynccontextmanager
async def running(
    command: Command, domid: int, *args: str, pass_fds: Sequence[int] = (), stdin: int | None = None
) -> AsyncIterator[trio.Process]:
    """The proxy as a process for the block (stderr piped, as libxl's log file); SIGTERM after."""
    argv, env = command(domid, args)
    process = await trio.lowlevel.open_process(
        argv,
        env=env,
        stdin=subprocess.DEVNULL if stdin is None else stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=tuple(pass_fds),
        start_new_session=True,  # as libxl's setsid()
    )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with trio.move_on_after(TIMEOUT / 4):
                    await process.wait()
                process.kill()
            await process.wait()
            assert process.stderr is not None
            await process.stderr.aclose()


async def stderr_of(process: trio.Process) -> str:
    assert process.stderr is not None
    chunks = []
    with trio.fail_after(TIMEOUT):
        while chunk := await process.stderr.receive_some():
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


async def exited(process: trio.Process) -> int:
    with trio.fail_after(TIMEOUT):
        return await process.wait()


@asynccontextmanager
async def dom0_store(sim: SimulatedHost) -> AsyncIterator[XenStoreClient]:
    path = os.fspath(Path(sim.directory) / "domains" / "0" / "xenstore")
    async with XenStoreClient(await trio.open_unix_socket(path)) as xs:
        yield xs


#: How long libxl would wait for "running" (far less than its own 60 s: a failure shows soon).
STARTUP: Final = 20


async def wait_for_running(sim: SimulatedHost, path: str = STATE_PATH) -> None:
    """Wait, as libxl does (a watch), until ``path`` reads ``running``."""
    async with dom0_store(sim) as xs, xs.watching(path) as changes:
        with trio.fail_after(STARTUP):
            while True:
                try:
                    if await xs.read(path) == b"running":
                        return
                except OSError:
                    pass
                await changes.wait()


async def qmp_like(stream: VchanStream, number: int) -> None:
    """One QMP-like exchange: a greeting, one line answered in capitals, then the socket client
    hangs up. (The C program drops what it has not yet read from the vchan when it sees the
    vchan closed, so the socket side closes first, as libxl does after its commands.)"""
    async with stream:
        await stream.send_all(b'{"QMP": %d}\n' % number)
        line = b""
        while not line.endswith(b"\n"):
            chunk = await stream.receive_some()
            if not chunk:
                return
            line += chunk
        await stream.send_all(line.upper())
        while await stream.receive_some():
            pass


@asynccontextmanager
async def stub_domain_server(sim: SimulatedHost, connections: int) -> AsyncIterator[None]:
    """The stub domain's end: serves QMP_VCHAN to dom0, ``connections`` times in turn."""
    backend = sim.backend(STUBDOM)
    try:
        async with trio.open_nursery() as nursery:
            listener = VchanListener(TOOLSTACK, QMP_VCHAN, backend=backend)

            async def serve() -> None:
                async with listener:
                    for number in range(1, connections + 1):
                        await qmp_like(await listener.accept(), number)

            nursery.start_soon(serve)
            yield
    finally:
        backend.close()


async def ask(sock: trio.SocketStream, question: bytes) -> bytes:
    """Read the greeting, ask, read the answer line, hang up."""
    async with sock:
        got = b""
        with trio.fail_after(TIMEOUT):
            while got.count(b"\n") < 1:
                got += await sock.receive_some()
            await sock.send_all(question)
            while got.count(b"\n") < 2:
                chunk = await sock.receive_some()
                assert chunk, f"the proxy closed after {got!r}"
                got += chunk
    return got


# -- as libxl runs it -----------------------------------------------------------------------------


async def test_libxl_qmp_proxy(proxy: Command, sim: SimulatedHost, tmp_path: Path) -> None:
    """libxl's exact argument shape: state path first, then the stub domain, the vchan path and
    the QMP socket. "running" appears once the socket listens; connections are served one
    after another, each by a fresh vchan connection; SIGTERM ends it."""
    qmp_socket = str(tmp_path / f"qmp-libxl-{GUEST}")
    args = (f"--state-path={STATE_PATH}", str(STUBDOM), QMP_VCHAN, qmp_socket)
    async with stub_domain_server(sim, 2), running(proxy, TOOLSTACK, *args) as process:
        await wait_for_running(sim)
        assert stat.S_ISSOCK(os.stat(qmp_socket).st_mode)
        first = await ask(await trio.open_unix_socket(qmp_socket), b"query-status\n")
        assert first == b'{"QMP": 1}\nQUERY-STATUS\n'
        second = await ask(await trio.open_unix_socket(qmp_socket), b"cont\n")
        assert second == b'{"QMP": 2}\nCONT\n'
        process.terminate()
        assert await exited(process) in SIGTERMED
        assert "Traceback" not in await stderr_of(process)


async def test_socket_activation(proxy: Command, sim: SimulatedHost, tmp_path: Path) -> None:
    """SOCKET as an inherited descriptor: a listening socket made by the caller (socket
    activation); a relative state path is below this domain's home."""
    path = str(tmp_path / "activated.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listening:
        listening.bind(path)
        listening.listen(4)
        fd = str(listening.fileno())
        args = ("--state-path", "device-model/3/qmp-proxy-state", str(STUBDOM), QMP_VCHAN, fd)
        async with (
            stub_domain_server(sim, 1),
            running(proxy, TOOLSTACK, *args, pass_fds=[listening.fileno()]) as process,
        ):
            await wait_for_running(sim)
            got = await ask(await trio.open_unix_socket(path), b"hello\n")
            assert got == b'{"QMP": 1}\nHELLO\n'
            process.terminate()
            assert await exited(process) in SIGTERMED


# -- the other shapes of SOCKET ---------------------------------------------------------------


async def test_server_relays_an_inherited_descriptor(proxy: Command, sim: SimulatedHost) -> None:
    """``-m server DOMID PATH N``: relay the vchan and descriptor N, exit 0 when the vchan
    client closes."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        args = ("-m", "server", str(TOOLSTACK), QMP_VCHAN, str(theirs.fileno()))
        async with running(proxy, STUBDOM, *args, pass_fds=[theirs.fileno()]) as process:
            theirs.close()
            local = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
            backend = sim.backend(TOOLSTACK)
            try:
                with trio.fail_after(TIMEOUT):
                    async with connect(STUBDOM, QMP_VCHAN, backend=backend) as vchan:
                        await vchan.send_all(b"to the descriptor\n")
                        assert await receive_exactly(local, 18) == b"to the descriptor\n"
                        await local.send_all(b"to the vchan\n")
                        assert await receive_exactly(vchan, 13) == b"to the vchan\n"
            finally:
                backend.close()
            assert await exited(process) == 0


async def receive_exactly(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        assert chunk, f"end of stream after {data!r}"
        data += chunk
    return data


async def test_server_mode_socket_path(proxy: Command, sim: SimulatedHost, tmp_path: Path) -> None:
    """``-m server DOMID PATH SOCKET_PATH``: each vchan connection gets a connection to the
    Unix socket."""
    path = str(tmp_path / "qemu.sock")
    listening = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listening.bind(path)
    listening.listen(4)
    listener = trio.SocketListener(listening)
    backend = sim.backend(TOOLSTACK)
    args = ("-m", "server", str(TOOLSTACK), QMP_VCHAN, path)
    try:
        async with listener, running(proxy, STUBDOM, *args):
            with trio.fail_after(TIMEOUT):
                async with connect(STUBDOM, QMP_VCHAN, backend=backend) as vchan:
                    local = await listener.accept()
                    async with local:
                        await local.send_all(b"greeting\n")
                        assert await receive_exactly(vchan, 9) == b"greeting\n"
                        await vchan.send_all(b"answer\n")
                        assert await receive_exactly(local, 7) == b"answer\n"
    finally:
        backend.close()


# -- failures: status 1, as the C program --------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("-m", "bogus", "3", QMP_VCHAN, "-"),
        ("3", QMP_VCHAN),
        ("3", QMP_VCHAN, "-", "extra"),
    ],
    ids=["bad-mode", "too-few", "too-many"],
)
async def test_bad_command_line_exits_1(proxy: Command, args: tuple[str, ...]) -> None:
    async with running(proxy, TOOLSTACK, *args) as process:
        assert await exited(process) == 1
        assert "usage" in (await stderr_of(process)).lower()


async def test_a_socket_path_in_use_exits_1(
    proxy: Command, sim: SimulatedHost, tmp_path: Path
) -> None:
    path = tmp_path / "taken.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as taken:
        taken.bind(str(path))
        async with running(proxy, TOOLSTACK, str(STUBDOM), QMP_VCHAN, str(path)) as process:
            assert await exited(process) == 1
            said = await stderr_of(process)
            # C: "bind: Address already in use"; trio-vchan names the path and what to do
            assert "Address already in use" in said or f"{path}: a socket is left there" in said


async def test_server_exits_1_when_its_socket_is_not_there(
    proxy: Command, sim: SimulatedHost, tmp_path: Path
) -> None:
    path = str(tmp_path / "nobody.sock")
    backend = sim.backend(TOOLSTACK)
    try:
        async with running(proxy, STUBDOM, "-m", "server", "0", QMP_VCHAN, path) as process:
            with trio.fail_after(TIMEOUT):
                async with connect(STUBDOM, QMP_VCHAN, backend=backend) as vchan:
                    assert await vchan.receive_some() == b""  # closed: nothing to relay to
            assert await exited(process) == 1
            assert "connect" in await stderr_of(process)
    finally:
        backend.close()


async def test_a_state_path_it_may_not_write_exits_1(proxy: Command, sim: SimulatedHost) -> None:
    """A domU writing to dom0's part of XenStore is refused: exit 1, nothing left behind."""
    args = ("-s", STATE_PATH, str(TOOLSTACK), QMP_VCHAN, "-")
    async with running(proxy, STUBDOM, *args) as process:
        assert await exited(process) == 1
        assert "Permission denied" in await stderr_of(process)


async def test_installed_under_the_c_programs_name() -> None:
    """The ``vchan-socket-proxy`` console script is the drop-in (what to put in libxl's path)."""
    script = Path(sys.executable).with_name("vchan-socket-proxy")
    assert script.exists(), "pip install the package: it installs the vchan-socket-proxy script"
    with trio.fail_after(TIMEOUT):
        shown = await trio.run_process([script, "--help"], capture_stdout=True)
        bad = await trio.run_process([script], capture_stderr=True, check=False)
    assert shown.stdout.startswith(b"usage: vchan-socket-proxy [-h] [-m {client,server}]")
    assert bad.returncode == 1
    assert b"vchan-socket-proxy: error: the following arguments are required" in bad.stderr
