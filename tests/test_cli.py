"""The ``trio-vchan`` command line, run as real processes on a simulated host."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from subprocess import DEVNULL
from typing import IO, Any

import pytest
import trio
from subprocess_paths import SAFE_PATH

from trio_vchan import VchanStream, serve_vchan
from trio_vchan._cli._progress import format_size
from trio_vchan._cli._status import ExitStatus, describe
from trio_vchan._cli._waiting import NOTICE_DELAY
from trio_vchan._handshake import DEFAULT_HANDSHAKE_TIMEOUT
from trio_vchan._xenstore import XenStoreClient
from trio_vchan.sim import ENV_DIR, ENV_DOMID, SimulatedHost

TIMEOUT = 60  # generous: these machines are small and shared
CLI = (sys.executable, *SAFE_PATH, "-m", "trio_vchan")
REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


# -- helpers --------------------------------------------------------------------------------------


def clean_environ() -> dict[str, str]:
    """This process's environment without any simulated host in it."""
    return {k: v for k, v in os.environ.items() if k not in (ENV_DIR, ENV_DOMID)}


def domain_environ(sim: SimulatedHost, domid: int) -> dict[str, str]:
    return {**clean_environ(), **sim.environ(domid)}


Stdio = int | IO[Any]


@asynccontextmanager
async def cli(
    environ: Mapping[str, str],
    *args: str,
    stdin: Stdio = subprocess.DEVNULL,
    stdout: Stdio = subprocess.PIPE,
    stderr: Stdio = subprocess.PIPE,
) -> AsyncIterator[trio.Process]:
    """Start ``python -m trio_vchan ARGS``; kill it if the block fails, close its pipes."""
    process = await trio.lowlevel.open_process(
        [*CLI, *args], env=dict(environ), stdin=stdin, stdout=stdout, stderr=stderr
    )
    try:
        yield process
    except BaseException:
        # A clean stop first (SIGTERM closes vchans and withdraws advertisements, which a
        # SIGKILL would leave in XenStore for the leak check to report), then a kill.
        process.terminate()
        with trio.CancelScope(shield=True), trio.move_on_after(TIMEOUT / 4):
            await process.wait()
        process.kill()
        raise
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(TIMEOUT):
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()
            await process.wait()


async def run_cli(
    environ: Mapping[str, str], *args: str, stdin: bytes | Stdio = subprocess.DEVNULL
) -> subprocess.CompletedProcess[bytes]:
    """Run the command to its end. Bytes for ``stdin`` come from a file, whose end is there at
    once: through a pipe, an answer and a close could arrive before the pipe's writer closed
    it, which the command rightly reports as a close before the end of its input."""
    with tempfile.TemporaryFile() as given, trio.fail_after(TIMEOUT):
        if isinstance(stdin, bytes):
            given.write(stdin)
            given.seek(0)
            stdin = given
        return await trio.run_process(
            [*CLI, *args],
            env=dict(environ),
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def read_all(stream: trio.abc.ReceiveStream | None) -> bytes:
    assert stream is not None
    chunks = []
    with trio.fail_after(TIMEOUT):
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    return b"".join(chunks)


async def read_until(stream: trio.abc.ReceiveStream | None, marker: bytes) -> bytes:
    """Read until ``marker`` has arrived (or the stream ends); return everything read."""
    assert stream is not None
    data = b""
    with trio.fail_after(TIMEOUT):
        while marker not in data:
            chunk = await stream.receive_some()
            if not chunk:
                break
            data += chunk
    return data


async def wait(process: trio.Process) -> int:
    with trio.fail_after(TIMEOUT):
        return await process.wait()


def no_traceback(stderr: bytes) -> None:
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")


#: What xencat says on stderr, and ``trio-vchan cat`` too (not with ``--quiet``).
XENCAT_LINES = b"Connected.\nDisconnected.\n"

_NOTICE = re.compile(
    rb"trio-vchan \w+: waiting for domain \d+ to (serve|connect to) '.*' \(.*\)"
    rb"(; there is no domain .*)?\n"
)


def without_notices(stderr: bytes) -> bytes:
    """``stderr`` without the lines that say, after a second, what a command waits for (a
    busy machine can make any wait that long)."""
    return _NOTICE.sub(b"", stderr)


def blocks(total: int, size: int = MiB) -> Iterator[bytes]:
    """``total`` bytes that differ from block to block, made quickly."""
    base = os.urandom(size)
    for index, offset in enumerate(range(0, total, size)):
        block = index.to_bytes(8, "little") + base[8:]
        yield block[: min(size, total - offset)]


@contextmanager
def zeros_file() -> Iterator[IO[bytes]]:
    """``/dev/zero``, an endless standard input (opening it never blocks)."""
    with open("/dev/zero", "rb") as zeros:
        yield zeros


# -- the command line itself ----------------------------------------------------------------------


def console_script() -> str:
    here = Path(sys.executable).with_name("trio-vchan")
    found = str(here) if here.exists() else shutil.which("trio-vchan")
    if found is None:
        pytest.skip("the trio-vchan console script is not installed")
    return found


@pytest.mark.parametrize("how", ["module", "script"])
async def test_version(how: str) -> None:
    from trio_vchan import __version__

    command = [*CLI] if how == "module" else [console_script()]
    result = await trio.run_process([*command, "--version"], capture_stdout=True)
    assert result.stdout.decode().strip() == f"trio-vchan {__version__}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), ["cat", "proxy", "sim", "examples:"]),
        (("cat",), ["DOMID PORT", "--keep-open", "--timeout", "--handshake-timeout", "124"]),
        (("proxy",), ["--unix PATH", "--tcp [HOST]:PORT", "--timeout", "--handshake-timeout"]),
        (("sim",), ["COMMAND"]),
    ],
)
async def test_help(args: tuple[str, ...], expected: list[str]) -> None:
    result = await run_cli(clean_environ(), *args, "--help")
    assert result.returncode == 0
    for text in expected:
        assert text in result.stdout.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "required: COMMAND"),
        (("dance",), "invalid choice: 'dance'"),
        (("cat",), "required: DOMID, PORT"),
        (("cat", "dom/1", "foo"), "a domain is an id (a decimal number) or a name without '/'"),
        (("cat", "32752", "foo"), "domid must be 0..32751, not 32752"),
        (("cat", "1", "no spaces"), "port"),
        (("cat", "--buffer-size", "0", "1", "foo"), "the buffer size must be 1..1048576"),
        (("cat", "--buffer-size", "2M", "1", "foo"), "the buffer size must be 1..1048576"),
        (("cat", "--buffer-size", "lots", "1", "foo"), "not 'lots'"),
        (("cat", "--buffer-size", "2G", "1", "foo"), "bytes up to 1M (1048576), like"),
        (("cat", "--progress", "--quiet", "1", "foo"), "not allowed with argument"),
        (("cat", "--domid", "-3", "1", "foo"), "argument --domid: a domain id"),
        (("proxy", "-l", "1", "foo"), "one of the arguments --unix --tcp is required"),
        (("proxy", "-l", "1,1", "foo", "--unix", "s"), "a domain is repeated in '1,1'"),
        (("proxy", "-l", "1", "foo", "--tcp", "80"), "expected HOST:PORT or :PORT, not '80'"),
        (("proxy", "-l", "1", "foo", "--tcp", ":99999"), "a TCP port is 0..65535, not 99999"),
        (("proxy", "-l", "1", "foo", "--tcp", "::1:80"), "write an IPv6 host in brackets"),
        (("proxy", "1,2", "foo", "--unix", "s"), "only a listening proxy (-l) serves several"),
        (("cat", "--timeout", "0", "1", "foo"), "a timeout is a positive number of seconds"),
        (("cat", "--timeout", "-1", "1", "foo"), "not '-1'"),
        (("cat", "--timeout", "nan", "1", "foo"), "not 'nan'"),
        (("cat", "--timeout", "inf", "1", "foo"), "not 'inf'"),
        (("cat", "--timeout", "soon", "1", "foo"), "not 'soon'"),
        (("cat", "-l", "--handshake-timeout", "0", "1", "foo"), "a timeout is a positive"),
        (("cat", "--handshake-timeout", "1", "1", "foo"), "--handshake-timeout is for the"),
        (("proxy", "--handshake-timeout", "1", "1", "foo", "--unix", "s"), "use it with -l"),
    ],
)
async def test_bad_arguments_exit_2_with_a_message(args: tuple[str, ...], message: str) -> None:
    result = await run_cli(clean_environ(), *args)
    assert result.returncode == ExitStatus.USAGE
    assert message in result.stderr.decode()
    no_traceback(result.stderr)


@pytest.mark.parametrize(
    ("args", "usage", "unknown"),
    [
        (("cat", "--bogus", "1", "foo"), "usage: trio-vchan cat [-h]", "--bogus"),
        (("cat", "1", "foo", "extra"), "usage: trio-vchan cat [-h]", "extra"),
        (("proxy", "1", "foo", "--unix", "s", "-x"), "usage: trio-vchan proxy [-h]", "-x"),
        (("sim", "--bogus"), "usage: trio-vchan sim [-h]", "--bogus"),
        # before the command, it is the top level's
        (("--bogus", "cat", "1", "foo"), "usage: trio-vchan [-h] [--version]", "--bogus"),
    ],
)
async def test_an_unknown_argument_gets_the_usage_of_its_command(
    args: tuple[str, ...], usage: str, unknown: str
) -> None:
    result = await run_cli(clean_environ(), *args)
    assert result.returncode == ExitStatus.USAGE
    stderr = result.stderr.decode()
    assert stderr.startswith(usage)
    assert stderr.endswith(f": error: unrecognized arguments: {unknown}\n")


async def test_bad_domid_in_the_environment_is_a_usage_error(sim: SimulatedHost) -> None:
    environ = {**clean_environ(), ENV_DIR: sim.directory, ENV_DOMID: "dom1"}
    result = await run_cli(environ, "cat", "0", "foo")
    assert result.returncode == ExitStatus.USAGE
    assert "TRIO_VCHAN_DOMID must be a decimal domain id, not 'dom1'" in result.stderr.decode()


async def test_no_platform_says_how_to_get_one() -> None:
    if await trio.Path("/dev/xen/evtchn").exists():
        pytest.skip("this machine runs Xen")
    result = await run_cli(clean_environ(), "cat", "0", "foo")
    assert result.returncode == ExitStatus.FAILURE
    assert result.stderr.decode().startswith("trio-vchan cat: no vchan platform found")
    assert "trio-vchan sim" in result.stderr.decode()


def test_sizes_are_printed_in_binary_units() -> None:
    assert [format_size(n) for n in (0, 1023, 1536, 10 * 1024, 1 << 30, 1000 << 30)] == [
        "0 B",
        "1023 B",
        "1.50 KiB",
        "10.0 KiB",
        "1.00 GiB",
        "1000 GiB",
    ]


# -- cat: data --------------------------------------------------------------------------------


async def test_listener_receives_a_file_and_both_end(sim: SimulatedHost) -> None:
    """The README's transfer: the listener's stdin is /dev/null, so it only receives and
    ends when the sender closes; the sender ends after its stdin's end, all of it delivered."""
    data = b"".join(blocks(3 * MiB + 12345))
    async with trio.open_nursery() as nursery:
        results: dict[str, subprocess.CompletedProcess[bytes]] = {}

        async def run(name: str, domid: int, *args: str, stdin: bytes | int) -> None:
            results[name] = await run_cli(domain_environ(sim, domid), *args, stdin=stdin)

        nursery.start_soon(partial(run, "receiver", 2, "cat", "-l", "1", "foo", stdin=DEVNULL))
        nursery.start_soon(partial(run, "sender", 1, "cat", "2", "foo", stdin=data))
    receiver, sender = results["receiver"], results["sender"]
    assert (receiver.returncode, sender.returncode) == (0, 0)
    assert receiver.stdout == data
    assert sender.stdout == b""
    # no progress unless stderr is a terminal; xencat's two lines, word for word
    assert without_notices(receiver.stderr) == XENCAT_LINES
    assert without_notices(sender.stderr) == XENCAT_LINES


async def test_listener_sends_and_the_client_receives(sim: SimulatedHost) -> None:
    data = b"".join(blocks(2 * MiB + 1))
    async with (
        cli(domain_environ(sim, 1), "cat", "-l", "2", "port-7", stdin=subprocess.PIPE) as server,
        cli(domain_environ(sim, 2), "cat", "--buffer-size", "4K", "1", "port-7") as client,
    ):
        assert server.stdin is not None
        stdin = server.stdin

        async def send() -> None:
            await stdin.send_all(data)
            await stdin.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            received = await read_all(client.stdout)
        assert received == data
        assert (await wait(server), await wait(client)) == (0, 0)


async def test_empty_input_sends_an_empty_file(sim: SimulatedHost) -> None:
    """An empty pipe is an empty file, not "nothing to send" (only /dev/null is that)."""
    async with trio.open_nursery() as nursery:
        results: list[subprocess.CompletedProcess[bytes]] = []

        async def receive() -> None:
            results.append(await run_cli(domain_environ(sim, 2), "cat", "-l", "1", "empty"))

        nursery.start_soon(receive)
        sender = await run_cli(domain_environ(sim, 1), "cat", "2", "empty", stdin=b"")
    assert sender.returncode == 0
    assert results[0].returncode == 0
    assert results[0].stdout == b""


async def test_domid_option_instead_of_the_environment(sim: SimulatedHost) -> None:
    environ = {**clean_environ(), ENV_DIR: sim.directory}
    async with trio.open_nursery() as nursery:
        results: list[subprocess.CompletedProcess[bytes]] = []

        async def receive() -> None:
            args = ("cat", "--domid", "5", "-l", "6", "opt")
            results.append(await run_cli(environ, *args))

        nursery.start_soon(receive)
        sender = await run_cli(environ, "cat", "--domid", "6", "5", "opt", stdin=b"by option")
    assert sender.returncode == 0
    assert results[0].stdout == b"by option"


async def test_keep_open_waits_for_the_answer(sim: SimulatedHost) -> None:
    """A request, its end, then the whole answer: the peer's close ends it."""
    async with (
        cli(domain_environ(sim, 0), "cat", "-l", "3", "ask", stdin=subprocess.PIPE) as server,
        trio.open_nursery() as nursery,
    ):
        results: list[subprocess.CompletedProcess[bytes]] = []

        async def ask() -> None:
            args = ("cat", "--keep-open", "0", "ask")
            results.append(await run_cli(domain_environ(sim, 3), *args, stdin=b"question\n"))

        nursery.start_soon(ask)
        assert await read_until(server.stdout, b"\n") == b"question\n"
        assert server.stdin is not None
        await server.stdin.send_all(b"the answer\n")
        await server.stdin.aclose()  # its end of input closes the vchan
        assert await wait(server) == 0
    assert results[0].returncode == 0
    assert results[0].stdout == b"the answer\n"


async def test_a_gigabyte_through_pipes_arrives_byte_exact(sim: SimulatedHost) -> None:
    size = 1 << 30
    sent, received = hashlib.sha256(), hashlib.sha256()
    count = 0
    started = trio.current_time()
    async with (
        cli(domain_environ(sim, 2), "cat", "-l", "1", "big") as receiver,
        cli(
            domain_environ(sim, 1),
            "cat",
            "2",
            "big",
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        ) as sender,
    ):
        assert sender.stdin is not None
        assert receiver.stdout is not None
        source, sink = sender.stdin, receiver.stdout

        async def feed() -> None:
            for block in blocks(size):
                sent.update(block)
                await source.send_all(block)
            await source.aclose()

        with trio.fail_after(10 * TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                while chunk := await sink.receive_some(MiB):
                    received.update(chunk)
                    count += len(chunk)
        assert (await wait(sender), await wait(receiver)) == (0, 0)
    elapsed = trio.current_time() - started
    assert count == size
    assert received.hexdigest() == sent.hexdigest()
    print(f"1 GiB through two cat processes in {elapsed:.1f} s: {size / MiB / elapsed:.0f} MiB/s")


# -- cat: endings -------------------------------------------------------------------------------


async def test_stdout_closed_early_ends_quietly(sim: SimulatedHost) -> None:
    """``trio-vchan cat 2 foo | head``: the reader's early exit is status 141, no message;
    the endless sender learns that the peer closed."""
    cli_text = " ".join(CLI)
    with zeros_file() as zeros:
        async with cli(domain_environ(sim, 2), "cat", "-l", "1", "endless", stdin=zeros) as sender:
            with trio.fail_after(TIMEOUT):
                head = await trio.run_process(
                    [
                        "bash",
                        "-c",
                        f"{cli_text} cat 2 endless | head -c 100000 | wc -c;"
                        ' echo "${PIPESTATUS[0]}" >&2',
                    ],
                    env=domain_environ(sim, 1),
                    stdin=DEVNULL,
                    capture_stdout=True,
                    capture_stderr=True,
                )
            assert head.stdout.split() == [b"100000"]
            # nothing but xencat's first line and the status we echoed
            assert head.stderr.split() == [b"Connected.", b"141"]
            assert await wait(sender) == ExitStatus.FAILURE
            assert sender.stderr is not None
            message = without_notices(await read_all(sender.stderr)).decode()
            assert message == (
                "Connected.\nDisconnected.\n"
                "trio-vchan cat: the peer closed the vchan before the end of stdin\n"
            )


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGINT, ExitStatus.INTERRUPTED), (signal.SIGTERM, ExitStatus.TERMINATED)],
)
async def test_signal_while_waiting_for_a_client_withdraws(
    sim: SimulatedHost, signum: int, status: int
) -> None:
    async with cli(domain_environ(sim, 0), "cat", "--progress", "-l", "4", "wait") as server:
        # the note comes after the signal handlers are in place
        assert b"waiting for domain 4" in await read_until(server.stderr, b"waiting")
        server.send_signal(signum)
        assert await wait(server) == status
        no_traceback(await read_all(server.stderr))
    # the fixture checks that the advertisement and the pages are gone


@pytest.mark.parametrize(
    ("interrupted", "other_status"),
    [
        # the server only received: the close is the end of its stream
        ("client", ExitStatus.OK),
        # the client's stdin had supplied data and not ended: not all of it may have gone
        ("server", ExitStatus.FAILURE),
    ],
)
async def test_ctrl_c_closes_the_vchan_cleanly(
    sim: SimulatedHost, interrupted: str, other_status: int
) -> None:
    async with (
        cli(domain_environ(sim, 1), "cat", "-l", "2", "chat", stdin=subprocess.PIPE) as server,
        cli(domain_environ(sim, 2), "cat", "1", "chat", stdin=subprocess.PIPE) as client,
    ):
        assert client.stdin is not None
        await client.stdin.send_all(b"hello\n")
        assert await read_until(server.stdout, b"\n") == b"hello\n"  # connected, data moved
        target, other = (client, server) if interrupted == "client" else (server, client)
        target.send_signal(signal.SIGINT)
        assert await wait(target) == ExitStatus.INTERRUPTED
        assert await wait(other) == other_status  # both stdins are still open
        no_traceback(await read_all(target.stderr))
        message = b"the peer closed the vchan before the end of stdin\n" if other_status else b""
        assert (await read_all(other.stderr)).endswith(message)


@pytest.mark.parametrize(
    ("options", "message"),
    [((), XENCAT_LINES + b"trio-vchan cat: the peer closed the vchan\n"), (("-q",), b"")],
)
async def test_the_peer_closing_an_interactive_cat_ends_it_plainly(
    sim: SimulatedHost, options: tuple[str, ...], message: bytes
) -> None:
    """At a terminal the peer's close is the end of the conversation: status 0, said plainly.
    (With a pipe the same close is status 1: see test_ctrl_c_closes_the_vchan_cleanly.)"""
    controller, terminal = os.openpty()
    try:
        async with (
            cli(domain_environ(sim, 1), "cat", "-l", "2", "chat", stdin=subprocess.PIPE) as server,
            cli(domain_environ(sim, 2), "cat", *options, "1", "chat", stdin=terminal) as client,
        ):
            os.close(terminal)
            terminal = -1
            os.write(controller, b"hello\n")  # typed; the line discipline passes it on
            assert await read_until(server.stdout, b"\n") == b"hello\n"
            assert server.stdin is not None
            await server.stdin.aclose()  # the server's input ends: it closes the vchan
            assert await wait(server) == ExitStatus.OK
            assert await wait(client) == ExitStatus.OK
            assert without_notices(await read_all(client.stderr)) == message
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)


@pytest.mark.parametrize("killed", ["receiver", "sender"])
async def test_a_peer_that_dies(sim: SimulatedHost, killed: str) -> None:
    """SIGKILL one end mid-transfer. The sender fails (status 1); the receiver ends as at a
    close (status 0): in vchan, a dead peer's live byte is cleared just as a closing one's."""
    with zeros_file() as zeros:
        async with (
            cli(domain_environ(sim, 2), "cat", "-l", "1", "doomed") as receiver,
            cli(domain_environ(sim, 1), "cat", "2", "doomed", stdin=zeros) as sender,
        ):
            assert receiver.stdout is not None
            assert await receiver.stdout.receive_some(MiB)  # data is flowing
            if killed == "receiver":
                receiver.kill()
                assert await wait(sender) == ExitStatus.FAILURE
                assert b"the peer closed the vchan before the end of stdin" in await read_all(
                    sender.stderr
                )
            else:
                sender.kill()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_all, receiver.stdout)  # drain what is left
                    assert await wait(receiver) == ExitStatus.OK


# -- progress ---------------------------------------------------------------------------------


async def send_with_options(
    sim: SimulatedHost, *options: str, stdin: bytes | Stdio = bytes(4 * MiB)
) -> bytes:
    """Send 4 MiB with ``options``; return the sender's stderr."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_cli, domain_environ(sim, 2), "cat", "-l", "1", "progress")
        sender = await run_cli(
            domain_environ(sim, 1), "cat", *options, "2", "progress", stdin=stdin
        )
    assert sender.returncode == 0
    return sender.stderr


async def test_progress_forced_reports_the_rate(sim: SimulatedHost) -> None:
    stderr = (await send_with_options(sim, "--progress")).decode()
    final = stderr.replace("\x1b[K", "").split("\r")[-1]
    assert re.fullmatch(
        r"sent 4\.00 MiB, received 0 B in [\d.]+ s \([\d.]+ \S+/s\)\nDisconnected\.\n", final
    )


async def test_progress_of_a_file_shows_the_part_sent(sim: SimulatedHost, tmp_path: Path) -> None:
    """With standard input a regular file, its size is known: the line says how much of it
    was sent (the first line comes with the first data)."""
    source = tmp_path / "four-mib"
    source.write_bytes(bytes(4 * MiB))
    with source.open("rb") as stdin:
        stderr = (await send_with_options(sim, "--progress", stdin=stdin)).decode()
    assert re.search(r"\rsent [\d.]+ \S+ of 4\.00 MiB \(\d+%\), received 0 B in ", stderr), stderr


def test_the_running_line_has_the_percentage_and_the_time_left() -> None:
    from trio_vchan._cli._bridge import Transfer
    from trio_vchan._cli._progress import format_duration, running_line

    transfer = Transfer(sent=MiB, received=0)
    line = running_line(transfer, 2.0, 4 * MiB)
    assert line == "sent 1.00 MiB of 4.00 MiB (25%), received 0 B in 2.0 s (512 KiB/s), ETA 0:06"
    assert running_line(transfer, 2.0, None) == "sent 1.00 MiB, received 0 B in 2.0 s (512 KiB/s)"
    assert [format_duration(s) for s in (0, 0.2, 83, 3723)] == ["0:00", "0:01", "1:23", "1:02:03"]


async def test_quiet_prints_nothing(sim: SimulatedHost) -> None:
    assert await send_with_options(sim, "--quiet") == b""


async def test_progress_by_default_on_a_terminal(sim: SimulatedHost) -> None:
    controller, terminal = os.openpty()
    try:
        stderr = await send_with_options_on(sim, terminal, controller)
    finally:
        os.close(controller)
    assert b"sent 4.00 MiB, received 0 B in" in stderr


async def test_a_sender_at_a_terminal_shows_progress(sim: SimulatedHost, tmp_path: Path) -> None:
    """``trio-vchan cat 2 foo < foo`` typed at a terminal (stdout and stderr the terminal,
    stdin a file) shows progress, with the part of the file sent; a conversation does not
    (stdin the terminal too: see test_the_peer_closing_an_interactive_cat_ends_it_plainly)."""
    source = tmp_path / "file"
    source.write_bytes(bytes(MiB))
    controller, terminal = os.openpty()
    try:
        with source.open("rb") as stdin:
            async with (
                trio.open_nursery() as nursery,
                cli(
                    domain_environ(sim, 1),
                    *("cat", "2", "tty"),
                    stdin=stdin,
                    stdout=terminal,
                    stderr=terminal,
                ) as sender,
            ):
                os.close(terminal)
                terminal = -1
                nursery.start_soon(run_cli, domain_environ(sim, 2), "cat", "-l", "1", "tty")
                assert await wait(sender) == 0
        output = drain_terminal(controller)
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    assert re.search(rb"sent [\d.]+ \S+ of 1\.00 MiB \(\d+%\)", output), output


def drain_terminal(controller: int) -> bytes:
    """Everything written to the terminal whose controlling side is ``controller``."""
    output = b""
    os.set_blocking(controller, False)
    while True:
        try:
            chunk = os.read(controller, 65536)
        except (BlockingIOError, OSError):  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        output += chunk
    return output


async def send_with_options_on(sim: SimulatedHost, terminal: int, controller: int) -> bytes:
    async with (
        trio.open_nursery() as nursery,
        cli(
            domain_environ(sim, 1), "cat", "2", "tty", stdin=subprocess.PIPE, stderr=terminal
        ) as sender,
    ):
        os.close(terminal)
        nursery.start_soon(run_cli, domain_environ(sim, 2), "cat", "-l", "1", "tty")
        assert sender.stdin is not None
        await sender.stdin.send_all(bytes(4 * MiB))
        await sender.stdin.aclose()
        assert await wait(sender) == 0
    return drain_terminal(controller)


# -- proxy ------------------------------------------------------------------------------------


@asynccontextmanager
async def socket_service(kind: str, tmp_path: Path, expected: int) -> AsyncIterator[list[str]]:
    """A Unix or TCP server that answers one line in capitals, then closes. The first
    ``expected`` connections are answered only once all of them are open (proving that they
    are served at the same time). Yields the proxy's ``--unix``/``--tcp`` arguments."""
    if kind == "unix":
        path = str(tmp_path / "service.sock")
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(path)
        sock.listen(16)
        listeners = [trio.SocketListener(sock)]
        target = ["--unix", path]
    else:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        target = ["--tcp", f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"]
    together = trio.Event()
    opened = 0

    async def answer(stream: trio.SocketStream) -> None:
        nonlocal opened
        async with stream:
            opened += 1
            if opened == expected:
                together.set()
            line = await read_until(stream, b"\n")
            if opened <= expected:
                await together.wait()
            await stream.send_all(line.upper())

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, answer, listeners)
        yield target
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_proxy_serves_vchan_clients_at_once(
    sim: SimulatedHost, tmp_path: Path, kind: str
) -> None:
    """``proxy -l 1,2,3``: vchan clients of three domains served at the same time, then
    clients that reconnect. (Clients of one domain must not race for one advertisement: the
    loser of such a race fails, as with libxenvchan.)"""
    async with (
        socket_service(kind, tmp_path, expected=3) as target,
        cli(domain_environ(sim, 0), "proxy", "-l", "1,2,3", "svc", *target) as proxy,
    ):

        async def ask(domid: int, question: bytes) -> None:
            args = ("cat", "--keep-open", "0", "svc")
            result = await run_cli(domain_environ(sim, domid), *args, stdin=question)
            assert (result.returncode, result.stdout) == (0, question.upper()), result.stderr

        async with trio.open_nursery() as nursery:
            for domid, question in [(1, b"one\n"), (2, b"two\n"), (3, b"three\n")]:
                nursery.start_soon(ask, domid, question)
        await ask(2, b"again\n")
        await ask(2, b"and again\n")
        proxy.send_signal(signal.SIGINT)
        assert await wait(proxy) == ExitStatus.INTERRUPTED
        log = (await read_all(proxy.stderr)).decode()
        no_traceback(log.encode())
        assert "connection 5: the socket end closed; sent 10 B, received 10 B in" in log


@asynccontextmanager
async def vchan_service(sim: SimulatedHost, client_domid: int, port: str) -> AsyncIterator[None]:
    """A vchan server in dom0 (in this process) that answers one line in capitals."""
    backend = sim.backend(0)

    async def answer(stream: VchanStream) -> None:
        async with stream:
            line = await read_until(stream, b"\n")
            await stream.send_all(line.upper())

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_vchan, answer, [client_domid], port, backend=backend))
            yield
            nursery.cancel_scope.cancel()
    finally:
        backend.close()


async def socket_connect(address: str) -> trio.SocketStream:
    if address.startswith("/"):
        return await trio.open_unix_socket(address)
    host, _, port = address.rpartition(":")
    return await trio.open_tcp_stream(host, int(port))


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_proxy_listens_on_a_socket(sim: SimulatedHost, tmp_path: Path, kind: str) -> None:
    """``proxy 0 svc --unix PATH`` / ``--tcp :0``: socket clients, one vchan connection each,
    in turn."""
    target = ["--unix", str(tmp_path / "proxy.sock")] if kind == "unix" else ["--tcp", ":0"]
    async with (
        vchan_service(sim, 1, "svc"),
        cli(domain_environ(sim, 1), "proxy", "0", "svc", *target) as proxy,
    ):
        banner = (await read_until(proxy.stderr, b"\n")).decode()
        found = re.search(r"listening on (\S+),", banner)
        assert found is not None, banner
        address = found.group(1)

        async def ask(question: bytes) -> None:
            with trio.fail_after(TIMEOUT):
                async with await socket_connect(address) as stream:
                    await stream.send_all(question)
                    assert await read_all(stream) == question.upper()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, b"first\n")
            nursery.start_soon(ask, b"second\n")  # waits its turn
        await ask(b"third\n")
        proxy.send_signal(signal.SIGTERM)
        assert await wait(proxy) == ExitStatus.TERMINATED
        no_traceback(await read_all(proxy.stderr))
    if kind == "unix":
        assert not (tmp_path / "proxy.sock").exists()


# -- waiting for the other domain --------------------------------------------------------------


def notice(command: str, waiting_for: str) -> bytes:
    return f"trio-vchan {command}: waiting for {waiting_for}\n".encode()


def gave_up(command: str, seconds: str, waiting_for: str) -> bytes:
    return f"trio-vchan {command}: gave up after {seconds} s waiting for {waiting_for}\n".encode()


#: Commands in domain 2 whose other domain (1) never comes, and what they wait for.
ALONE = [
    pytest.param(
        "cat",
        ("1", "alone"),
        "domain 1 to serve 'alone' (/local/domain/1/data/vchan/2/alone)",
        id="cat",
    ),
    pytest.param(
        "cat",
        ("1", "/local/domain/1/elsewhere"),
        "domain 1 to serve '/local/domain/1/elsewhere' (/local/domain/1/elsewhere)",
        id="cat-path",
    ),
    pytest.param(
        "cat",
        ("-l", "1", "alone"),
        "domain 1 to connect to 'alone' (/local/domain/2/data/vchan/1/alone)",
        id="cat-l",
    ),
    pytest.param(
        "proxy",
        ("-l", "1", "alone", "--unix", "/nonexistent/socket"),
        "domain 1 to connect to 'alone' (/local/domain/2/data/vchan/1/alone)",
        id="proxy-l",
    ),
]


@pytest.mark.parametrize(("command", "args", "waiting_for"), ALONE)
async def test_a_wait_of_a_second_is_mentioned_once(
    sim: SimulatedHost, command: str, args: tuple[str, ...], waiting_for: str
) -> None:
    started = trio.current_time()
    async with cli(domain_environ(sim, 2), command, *args) as process:
        expected = notice(command, waiting_for)
        stderr = await read_until(process.stderr, expected)
        # the child's second starts after it did: a lower bound that no load can break
        assert trio.current_time() - started >= NOTICE_DELAY
        assert expected in stderr
        # Once: nothing more for a while. (A sleep, as nothing else can show an absence.)
        await trio.sleep(2 * NOTICE_DELAY)
        process.terminate()
        assert await wait(process) == ExitStatus.TERMINATED
        stderr += await read_all(process.stderr)
    assert stderr.count(b"waiting for") == 1
    no_traceback(stderr)


@pytest.mark.parametrize("present", [False, True])
async def test_the_notice_says_when_the_other_domain_does_not_exist(
    sim: SimulatedHost, present: bool
) -> None:
    """Where XenStore lets us look (dom0; a domU's look is refused whether the domain exists
    or not), a wait for a domain that is not there says so: a wrong number, or one not
    started yet."""
    other = sim.backend(7) if present else None  # its first connection makes the domain
    try:
        async with cli(domain_environ(sim, 0), "cat", "-l", "7", "nobody") as process:
            waiting_for = "domain 7 to connect to 'nobody' (/local/domain/0/data/vchan/7/nobody)"
            absent = (
                "; there is no domain 7 (yet: /local/domain/7 is not in XenStore); check the"
                " domain number, or start it"
            )
            expected = notice("cat", waiting_for + ("" if present else absent))
            stderr = await read_until(process.stderr, b"waiting for")
            if not stderr.endswith(b"\n"):  # the rest of the line
                stderr += await read_until(process.stderr, b"\n")
            assert stderr == expected
            process.terminate()
            assert await wait(process) == ExitStatus.TERMINATED
    finally:
        if other is not None:
            other.close()


@pytest.mark.parametrize(("command", "args", "waiting_for"), ALONE)
async def test_timeout_gives_up_with_status_124(
    sim: SimulatedHost, command: str, args: tuple[str, ...], waiting_for: str
) -> None:
    """Given up before the second is out: only the failure is said (and a listener withdrew
    its advertisement: the fixture checks)."""
    result = await run_cli(domain_environ(sim, 2), command, "--timeout", "0.5", *args)
    assert result.returncode == 124  # ExitStatus.TIMED_OUT, as documented
    lines = result.stderr.splitlines(keepends=True)
    assert lines[-1] == gave_up(command, "0.5", waiting_for)
    assert not any(_NOTICE.fullmatch(line) for line in lines)


@pytest.mark.parametrize(("command", "args", "waiting_for"), ALONE)
async def test_quiet_waits_without_a_word(
    sim: SimulatedHost, command: str, args: tuple[str, ...], waiting_for: str
) -> None:
    result = await run_cli(domain_environ(sim, 2), command, "-q", "--timeout", "2.5", *args)
    assert result.returncode == ExitStatus.TIMED_OUT
    assert result.stderr == gave_up(command, "2.5", waiting_for)  # an error is still said


async def test_proxy_says_a_connection_waits_for_its_server(
    sim: SimulatedHost, tmp_path: Path
) -> None:
    """Without -l the proxy waits for the server once a socket client has come, and says so;
    the connection goes through once the server is there."""
    address = str(tmp_path / "proxy.sock")
    async with cli(domain_environ(sim, 1), "proxy", "0", "late", "--unix", address) as proxy:
        await read_until(proxy.stderr, b"listening on")
        with trio.fail_after(TIMEOUT):
            async with await socket_connect(address) as stream:
                await stream.send_all(b"anyone?\n")
                waiting_for = "domain 0 to serve 'late' (/local/domain/0/data/vchan/1/late)"
                expected = notice("proxy: connection 1", waiting_for)
                assert expected in await read_until(proxy.stderr, expected)
                async with vchan_service(sim, 1, "late"):
                    assert await read_all(stream) == b"ANYONE?\n"
        proxy.terminate()
        assert await wait(proxy) == ExitStatus.TERMINATED
        no_traceback(await read_all(proxy.stderr))


async def test_proxy_timeout_closes_a_connection_and_goes_on(
    sim: SimulatedHost, tmp_path: Path
) -> None:
    """Without -l, --timeout fails the socket connection whose server is not there; the
    proxy itself goes on (a socket client must not be able to stop it)."""
    address = str(tmp_path / "proxy.sock")
    args = ("proxy", "--timeout", "0.5", "0", "late", "--unix", address)
    async with cli(domain_environ(sim, 1), *args) as proxy:
        await read_until(proxy.stderr, b"listening on")
        with trio.fail_after(TIMEOUT):
            async with await socket_connect(address) as stream:
                # (nothing sent: closing a Unix socket with unread data resets it)
                assert await read_all(stream) == b""  # closed by the proxy
        waiting_for = "domain 0 to serve 'late' (/local/domain/0/data/vchan/1/late)"
        expected = gave_up("proxy: connection 1", "0.5", waiting_for)
        assert expected in await read_until(proxy.stderr, expected)
        async with vchan_service(sim, 1, "late"), await socket_connect(address) as stream:
            await stream.send_all(b"now?\n")
            assert await read_all(stream) == b"NOW?\n"
        proxy.terminate()
        assert await wait(proxy) == ExitStatus.TERMINATED


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("cat", ("1", "me")),
        ("cat", ("-l", "1", "me")),
        ("proxy", ("-l", "2,1", "me", "--unix", "/nonexistent/socket")),
        ("proxy", ("1", "me", "--unix", "/nonexistent/socket")),
    ],
)
async def test_own_domain_is_refused(
    sim: SimulatedHost, command: str, args: tuple[str, ...]
) -> None:
    """As Qubes' libvchan: a vchan joins two domains. Refused at once (the timeout only
    keeps a regression from hanging the test)."""
    result = await run_cli(domain_environ(sim, 1), command, "--timeout", "5", *args)
    assert result.returncode == ExitStatus.USAGE
    message = (
        f"trio-vchan {command}: domain 1 is this domain: a vchan connects two different domains\n"
    )
    assert result.stderr == message.encode()


_REFUSING_LIBRARY = """\
import sys
from contextlib import asynccontextmanager

import trio_vchan._api


def refuse_now(*args, **kwargs):
    raise ValueError("a bad argument that only the library noticed")


@asynccontextmanager
async def refuse(*args, **kwargs):
    refuse_now()
    yield


trio_vchan._api.connect = trio_vchan._api.serve = refuse
trio_vchan._api.VchanListener = refuse_now

from trio_vchan._cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("cat", ("1", "foo")),
        ("cat", ("-l", "1", "foo")),
        ("proxy", ("-l", "1", "foo", "--unix", "/nonexistent/socket")),
    ],
)
async def test_a_value_error_from_setup_is_one_line(
    sim: SimulatedHost, command: str, args: tuple[str, ...]
) -> None:
    """The real command, with a library that refuses its arguments (as it refuses our own
    domain, should the command line not have checked first)."""
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [sys.executable, *SAFE_PATH, "-c", _REFUSING_LIBRARY, command, *args],
            env=domain_environ(sim, 2),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == ExitStatus.USAGE
    message = f"trio-vchan {command}: a bad argument that only the library noticed\n"
    assert result.stderr == message.encode()


@asynccontextmanager
async def stalled_client(
    sim: SimulatedHost, domid: int, server: int, path: str
) -> AsyncIterator[None]:
    """A client in ``domid`` that takes the advertisement at ``path`` (binds its port, so no
    other client can) and never completes the handshake, until the block ends."""
    backend = sim.backend(domid)
    try:
        with trio.fail_after(TIMEOUT):
            async with XenStoreClient(await backend.connect_xenstore()) as xs:
                await xs.watch(f"{path}/event-channel", "stall")
                while True:
                    try:
                        port = int(await xs.read(f"{path}/event-channel"))
                        break
                    except OSError:  # not there, or not yet readable by us
                        await xs.next_watch_event()
        channel = backend.events.bind_interdomain(server, port)
        try:
            yield
        finally:
            channel.close()
    finally:
        backend.close()


@asynccontextmanager
async def stallable_server(
    sim: SimulatedHost, command: str, tmp_path: Path, *options: str
) -> AsyncIterator[tuple[trio.Process, str]]:
    """A listening ``cat`` or ``proxy`` in domain 2 for domain 1, on port ``hs``; yields it and
    its vchan's path. The proxy forwards to a service that answers in capitals."""
    path = "/local/domain/2/data/vchan/1/hs"
    environ = domain_environ(sim, 2)
    if command == "cat":
        async with cli(environ, "cat", "-l", *options, "1", "hs") as server:
            yield server, path
    else:
        async with (
            socket_service("unix", tmp_path, expected=1) as target,
            cli(environ, "proxy", "-l", *options, "1", "hs", *target) as server,
        ):
            yield server, path


@pytest.mark.parametrize("command", ["cat", "proxy"])
async def test_handshake_timeout_drops_a_client_that_stalls(
    sim: SimulatedHost, tmp_path: Path, command: str
) -> None:
    async with stallable_server(sim, command, tmp_path, "--handshake-timeout", "0.5") as (
        server,
        path,
    ):
        async with stalled_client(sim, 1, 2, path):
            # only once the stalled client was dropped can this one have the vchan
            keep_open = ("--keep-open",) if command == "proxy" else ()  # for the answer
            args = ("cat", *keep_open, "2", "hs")
            client = await run_cli(domain_environ(sim, 1), *args, stdin=b"through\n")
        assert client.returncode == ExitStatus.OK, client.stderr
        if command == "cat":
            assert await read_all(server.stdout) == b"through\n"
            assert await wait(server) == ExitStatus.OK
        else:
            assert client.stdout == b"THROUGH\n"
            server.terminate()
            assert await wait(server) == ExitStatus.TERMINATED
        no_traceback(await read_all(server.stderr))


@pytest.mark.parametrize("command", ["cat", "proxy"])
async def test_handshake_timeout_is_the_one_given(
    sim: SimulatedHost, tmp_path: Path, command: str
) -> None:
    """A --handshake-timeout longer than the library's default keeps the stalled client
    longer: the other client gives up first. (Were the option not passed on, the default
    would drop the stalled client after DEFAULT_HANDSHAKE_TIMEOUT and the other would
    connect.)"""
    patience = DEFAULT_HANDSHAKE_TIMEOUT + 3
    async with stallable_server(sim, command, tmp_path, "--handshake-timeout", "600") as (
        server,
        path,
    ):
        async with stalled_client(sim, 1, 2, path):
            args = ("cat", "--timeout", f"{patience:g}", "2", "hs")
            client = await run_cli(domain_environ(sim, 1), *args, stdin=b"through\n")
        assert client.returncode == ExitStatus.TIMED_OUT, client.stderr
        server.terminate()
        assert await wait(server) == ExitStatus.TERMINATED
        no_traceback(await read_all(server.stderr))


# -- the simulated host and the README's demo ---------------------------------------------------


async def test_sim_runs_both_ends(tmp_path: Path) -> None:
    source, copy = tmp_path / "source", tmp_path / "copy"
    source.write_bytes(b"".join(blocks(5 * MiB + 3)))
    script = (
        f'{" ".join(CLI)} cat --domid 2 -l 1 foo > "$1" &'
        f' {" ".join(CLI)} cat --domid 1 2 foo < "$2"; wait $!'
    )
    result = await run_cli(
        clean_environ(), "sim", "--", "sh", "-c", script, "sh", str(copy), str(source)
    )
    assert result.returncode == 0, result.stderr
    assert copy.read_bytes() == source.read_bytes()


async def test_demo_script(tmp_path: Path) -> None:
    environ = {**clean_environ(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if shutil.which("trio-vchan", path=environ["PATH"]) is None:
        pytest.skip("the trio-vchan console script is not installed")
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            ["bash", str(REPO / "scripts" / "demo-transfer.sh"), "--no-install", "--size", "8"],
            env={**environ, "TMPDIR": str(tmp_path)},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert re.search(rb"OK: 8 MiB arrived intact at [\d.]+ \S+/s\n\Z", result.stdout)
    assert list(await trio.Path(tmp_path).iterdir()) == []  # the data and the copy were removed


# -- errors name what was being done, to what, and what to do ------------------------------------


def leave_a_stale_socket(path: Path) -> None:
    """What a proxy killed with SIGKILL leaves: a bound socket file nobody listens on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


async def test_a_stale_unix_socket_is_named_and_can_be_replaced(
    sim: SimulatedHost, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.sock"
    leave_a_stale_socket(path)
    result = await run_cli(domain_environ(sim, 1), "proxy", "0", "svc", "--unix", str(path))
    assert result.returncode == ExitStatus.FAILURE
    assert result.stderr.decode() == (
        f"trio-vchan proxy: cannot listen on the Unix socket {path}: a socket is left there that"
        f" nobody listens on (by a proxy that crashed?); remove it (rm {path}), or pass"
        " --unlink-stale to replace it\n"
    )
    args = ("proxy", "0", "svc", "--unix", str(path), "--unlink-stale")
    async with vchan_service(sim, 1, "svc"), cli(domain_environ(sim, 1), *args) as proxy:
        assert b"listening on" in await read_until(proxy.stderr, b"\n")
        async with await trio.open_unix_socket(str(path)) as stream:
            await stream.send_all(b"replaced\n")
            assert await read_all(stream) == b"REPLACED\n"
        proxy.send_signal(signal.SIGTERM)
        assert await wait(proxy) == ExitStatus.TERMINATED
    assert not path.exists()


async def test_a_unix_socket_in_use_is_never_replaced(sim: SimulatedHost, tmp_path: Path) -> None:
    path = tmp_path / "busy.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(str(path))
        busy.listen(1)
        args = ("proxy", "0", "svc", "--unix", str(path), "--unlink-stale")
        result = await run_cli(domain_environ(sim, 1), *args)
        assert result.returncode == ExitStatus.FAILURE
        assert result.stderr.decode() == (
            f"trio-vchan proxy: cannot listen on the Unix socket {path}: another process"
            " listens there; stop it or choose another path\n"
        )
        assert path.exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            ("--unix", "{tmp}/no-such-dir/p.sock"),
            "cannot listen on the Unix socket {tmp}/no-such-dir/p.sock: the directory"
            " {tmp}/no-such-dir does not exist; create it or choose another path",
        ),
        (
            ("--unix", "{tmp}"),
            "cannot listen on the Unix socket {tmp}: a file that is not a socket is there;"
            " remove it or choose another path",
        ),
        (
            ("--tcp", "192.0.2.1:8080"),  # TEST-NET-1: the address of no interface here
            "cannot listen on TCP 192.0.2.1:8080: no interface of this machine has the address"
            " 192.0.2.1; use 127.0.0.1, 0.0.0.0 (every interface) or an address of this machine",
        ),
        (
            ("--tcp", "no-such-host.invalid:8080"),
            "cannot listen on TCP no-such-host.invalid:8080: cannot resolve the host"
            " 'no-such-host.invalid': ",
        ),
    ],
    ids=["ENOENT", "not-a-socket", "EADDRNOTAVAIL", "unknown-host"],
)
async def test_a_socket_it_cannot_listen_on_is_named(
    sim: SimulatedHost, tmp_path: Path, target: tuple[str, str], message: str
) -> None:
    option, where = target[0], target[1].format(tmp=tmp_path)
    result = await run_cli(domain_environ(sim, 1), "proxy", "0", "svc", option, where)
    assert result.returncode == ExitStatus.FAILURE
    assert result.stderr.decode().startswith(f"trio-vchan proxy: {message.format(tmp=tmp_path)}")
    assert result.stderr.count(b"\n") == 1


async def test_a_socket_it_cannot_connect_to_is_said_in_plain_words(
    sim: SimulatedHost, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nobody.sock")
    async with cli(domain_environ(sim, 0), "proxy", "-l", "1", "svc", "--unix", missing) as proxy:
        await run_cli(domain_environ(sim, 1), "cat", "0", "svc", stdin=b"anyone?")
        line = await read_until(proxy.stderr, b"directory\n")
        assert (
            f"connection 1: cannot connect to {missing}: No such file or directory\n".encode()
            in line
        )
        proxy.send_signal(signal.SIGINT)
        assert await wait(proxy) == ExitStatus.INTERRUPTED


async def test_a_path_xenstore_will_not_let_it_write(sim: SimulatedHost) -> None:
    """``cat -l`` at a path of another domain: XenStore refuses (EACCES on RM of a stale
    advertisement); the message says what was being done, where, and what to do."""
    args = ("cat", "-l", "1", "/local/domain/0/foo")
    result = await run_cli(domain_environ(sim, 2), *args)
    assert result.returncode == ExitStatus.FAILURE
    assert result.stderr.decode() == (
        "trio-vchan cat: cannot serve at /local/domain/0/foo: XenStore does not let domain 2"
        " write the advertisement there (RM /local/domain/0/foo: EACCES (Permission denied)); a"
        " domain may write below /local/domain/2/data (where a port name puts the vchan) and"
        " where the toolstack allows it: give a port name, or a path this domain may write\n"
    )


async def test_a_host_that_is_gone_is_said_once(tmp_path: Path) -> None:
    """A host killed with SIGKILL leaves its socket: joining it is refused. The cause is said
    once, not once more for each layer that passes it on."""
    leave_a_stale_socket(tmp_path / "host")
    environ = {**clean_environ(), ENV_DIR: str(tmp_path), ENV_DOMID: "1"}
    result = await run_cli(environ, "cat", "0", "foo")
    assert result.returncode == ExitStatus.FAILURE
    assert result.stderr.count(b"Connection refused") == 1, result.stderr


def test_describe_says_each_cause_once() -> None:
    inner = ConnectionRefusedError(111, "Connection refused")
    outer = OSError(f"cannot join the host: {inner}")
    outer.__cause__ = inner
    other = RuntimeError("the vchan broke")
    other.__cause__ = inner
    assert describe(outer) == "cannot join the host: [Errno 111] Connection refused"
    assert describe(other) == "the vchan broke: [Errno 111] Connection refused"


def test_the_commands_import_the_simulated_host_only_to_start_one() -> None:
    """Every command starts faster without the host and its XenStore (about a sixth of the
    start-up), so only ``sim`` imports them; a client of a host joins it through its socket."""
    check = (
        "import json, sys, trio_vchan._cli._main\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('trio_vchan._sim._'))))\n"
    )
    done = subprocess.run(
        [sys.executable, *SAFE_PATH, "-c", check], capture_output=True, text=True, check=True
    )
    imported = json.loads(done.stdout)
    assert "trio_vchan._sim._host" not in imported, imported
    assert "trio_vchan._sim._xenstored" not in imported, imported
