"""The ``trio-vchan sim`` subcommand: run a simulated host, optionally around one command;
run a command as a domain of a running host; or destroy a domain of a running host."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from .._backend import check_domid
from .._sim._client import parse_domid
from .._sim._proto import ENV_DIR, ENV_DOMID, MESSAGE_MAX, Op, Reply, Request
from .._xenshim import missing as xen_libs_missing
from .._xenshim import program_environ, xen_environ
from ._options import domid as domid_type

if TYPE_CHECKING:
    from .._sim._host import SimulatedHost


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sim`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "sim",
        help="run a simulated Xen host",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(parser)


DESCRIPTION = """\
Run a simulated Xen host in the foreground, printing TRIO_VCHAN_SIM=<dir>, until Ctrl-C or
SIGTERM stops it; or run COMMAND inside it and exit with COMMAND's status. COMMAND runs as
domain --domid N (default: $TRIO_VCHAN_DOMID if set, else 0) and gets TRIO_VCHAN_SIM,
TRIO_VCHAN_DOMID and XENSTORED_PATH (its domain's XenStore socket, so Xen's own tools such as
xenstore-read work unchanged). It runs in a session (process group) of its own, to which the
host passes on SIGINT and SIGTERM; after SIGTERM, a COMMAND still running 2 seconds later gets
SIGKILL. When COMMAND has ended, whatever is left of its group (jobs it started in the
background) gets SIGTERM, then SIGKILL 2 seconds later, before the host stops.

With --join, run COMMAND as a domain of the host already running at DIR (default:
$TRIO_VCHAN_SIM) instead: the domain is created if the host does not have it yet, and
trio-vchan then becomes COMMAND (exec), with the same environment as above.

With --xen-libs, COMMAND (and every program it starts) also gets trio-vchan's libxenevtchn,
libxengnttab and libxenctrl shim in LD_PRELOAD, before an inherited LD_PRELOAD, so that an
unmodified C or OCaml program built for Xen (libxenvchan, vchan-socket-proxy, ocaml-vchan) gets
its event channels and grants from the simulated host. The shim is built when trio-vchan is
installed; docs/interop.md lists the calls it covers.

With --background, start the host detached and print `export` lines for a shell's `eval`
(TRIO_VCHAN_SIM, TRIO_VCHAN_DOMID and XENSTORED_PATH, as COMMAND gets them); the host runs on
until `trio-vchan sim --stop` (or SIGTERM to it). --stop sends SIGTERM to the host serving DIR
and waits until it has stopped.

With --destroy DOMID, destroy domain DOMID of a running host instead, as `xl destroy` does:
the host performs the unmap-notifies of the domain's shares and mappings, closes its event
channels (their remote ends see the peer close), drops its connections, removes
/local/domain/DOMID from XenStore and fires @releaseDomain. Its processes keep running, cut
off. The domain id can then join again as a fresh domain.

DIR is created (mode 0700) if it does not exist; an existing DIR must be an empty directory,
and keeps its mode. A DIR that a host killed with SIGKILL left behind (sockets that nobody
serves) is refused as such: remove it first.
"""

EPILOG = """\
examples:
  trio-vchan sim -- sh -c 'trio-vchan cat --domid 2 -l 1 foo > copy &
                           trio-vchan cat --domid 1 2 foo < foo; wait'
  trio-vchan sim -- xenstore-read domid       # prints 0
  trio-vchan sim --domid 3 -- xenstore-read domid   # prints 3
  eval "$(trio-vchan sim --dir /tmp/host --background)"   # this shell is now domain 0
  trio-vchan sim --join --domid 1 --xen-libs -- /usr/lib/xen-4.17/bin/vchan-socket-proxy \\
      -m server 2 /local/domain/1/data/vchan/2/demo - &   # Xen's C program, as domain 1
  trio-vchan cat --domid 2 1 demo             # the proxy's stdin and stdout, as domain 2
  trio-vchan sim --stop                       # stop it again ($TRIO_VCHAN_SIM names it)
  trio-vchan sim --dir /tmp/host              # a host in the foreground, until Ctrl-C
  trio-vchan sim --dir /tmp/host --destroy 2  # destroy its domain 2
  trio-vchan sim --destroy 2                  # inside a host: TRIO_VCHAN_SIM names it

exit status: with COMMAND, COMMAND's (128+N if a signal N ended it; 127 it cannot be run,
or --xen-libs and the shim is not installed); without, 0 when stopped by SIGINT or SIGTERM;
--background: 0 the host runs; --stop: 0 stopped; --destroy: 0 destroyed, 1 no such domain or
domain 0; 1 no host running at DIR (--join, --stop, --destroy) or the host failed; 2 a bad
command line, or a DIR that cannot be used
"""

#: How long COMMAND (after SIGTERM) and the rest of its group (after it ended) have before SIGKILL.
GROUP_GRACE: Final = 2.0
_POLL: Final = 0.05


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the subcommand's options to ``parser``."""
    parser.add_argument(
        "--dir",
        metavar="DIR",
        help=(
            "the host's directory (created if absent, else it must be empty; default: a "
            "private temporary one); with --join, --stop or --destroy, the running host's "
            "(default: $TRIO_VCHAN_SIM)"
        ),
    )
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument(
        "--join",
        action="store_true",
        help="run COMMAND as a domain of the running host rather than in a new one",
    )
    actions.add_argument(
        "--background",
        action="store_true",
        help="start the host detached and print `export` lines for `eval`, then exit",
    )
    actions.add_argument(
        "--stop",
        action="store_true",
        help="stop the running host (SIGTERM) and wait until it has stopped",
    )
    actions.add_argument(
        "--destroy",
        metavar="DOMID",
        type=_destroy_domid,
        help="destroy domain DOMID of the running host, then exit",
    )
    parser.add_argument(
        "--name",
        metavar="DOMID=NAME",
        type=_domain_name,
        action="append",
        default=[],
        help=(
            "give domain DOMID the name NAME in XenStore (/local/domain/DOMID/name), as Xen's "
            "toolstack does; repeatable; domain 0 is Domain-0 unless named"
        ),
    )
    parser.add_argument(
        "--max-event-channels",
        metavar="N",
        type=int,
        help=(
            "the event channels each domain may have open at once, as xl's option of that "
            "name (default 4096, at most 131072)"
        ),
    )
    parser.add_argument(
        "--domid",
        metavar="N",
        type=domid_type,
        help=(
            "the domain COMMAND runs as (created if the host does not have it), or with "
            "--background the domain of the exports (default: $TRIO_VCHAN_DOMID, else 0)"
        ),
    )
    parser.add_argument(
        "--xen-libs",
        action="store_true",
        help=(
            "preload trio-vchan's libxenevtchn/libxengnttab/libxenctrl shim into COMMAND, so "
            "that unmodified Xen programs (libxenvchan, vchan-socket-proxy) run on the host"
        ),
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="a command to run"
    )


def _configured(directory: str | None, args: argparse.Namespace) -> SimulatedHost:
    """The host the options ask for, not started (imported only by the commands that start
    one: every trio-vchan command imports this module, and the others start faster without
    the host and its XenStore)."""
    from .._sim._host import SimulatedHost
    from .._sim._host_state import EVENT_CHANNELS_DEFAULT

    channels = args.max_event_channels
    return SimulatedHost(
        directory,
        names=_names(args.name),
        max_event_channels=EVENT_CHANNELS_DEFAULT if channels is None else channels,
    )


def _domain_name(text: str) -> tuple[int, str]:
    """Parse ``--name DOMID=NAME``."""
    domid_text, sep, name = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected DOMID=NAME, not {text!r}")
    from .._sim._host import check_domain_name  # here, as in _configured

    try:
        return parse_domid(domid_text), check_domain_name(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _names(pairs: list[tuple[int, str]]) -> dict[int, str]:
    """The names of ``--name``, one per domain (``SimulatedHost`` checks the rest).

    Raises:
        ValueError: a domain is named twice.
    """
    names: dict[int, str] = {}
    for domid, name in pairs:
        if domid in names:
            raise ValueError(f"--name: domain {domid} is named twice")
        names[domid] = name
    return names


def _destroy_domid(text: str) -> int:
    """Parse ``--destroy``'s DOMID (decimal, no leading zeros)."""
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise argparse.ArgumentTypeError(f"DOMID must be a decimal domain id, not {text!r}")
    try:
        return check_domid(int(text), "DOMID")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def destroy_domain(directory: str, domid: int) -> None:
    """Ask the simulated host at ``directory`` to destroy domain ``domid``.

    Raises:
        OSError: the host refused (``ESRCH``: no such domain; ``EINVAL``: domain 0), or there
            is no running host at ``directory``.
    """
    await _control_request(directory, Op.DESTROY_DOMAIN, domid)


async def _control_request(directory: str | os.PathLike[str], op: Op, domid: int) -> None:
    """Send one domain request (``op`` on ``domid``) to the control socket of a host."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    with sock:
        await sock.connect(os.fspath(Path(directory) / "host"))
        await sock.send(Request(op, (domid, 0, 0)).encode())
        data = await sock.recv(MESSAGE_MAX)
    if not data:
        raise OSError(errno.EPIPE, "the simulated host hung up")
    try:
        reply = Reply.decode(data)
    except ValueError as exc:
        raise OSError(errno.EPROTO, f"the simulated host sent a bad reply: {exc}") from None
    if reply.status:
        raise OSError(reply.status, reply.message)


def _host_pid(directory: str | os.PathLike[str]) -> int:
    """The process that serves the host at ``directory`` (from its control socket's
    credentials: the process that listens on it). Never blocks: a Unix socket connects at
    once or fails.

    Raises:
        OSError: nothing serves ``directory/host`` (``ENOENT``, ``ECONNREFUSED``, ...), or
            its backlog is full (``BlockingIOError``).
    """
    kind = socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    with socket.socket(socket.AF_UNIX, kind) as sock:
        sock.connect(os.fspath(Path(directory) / "host"))
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def _stale_hint(directory: str | os.PathLike[str], alternative: str = "") -> str:
    return (
        f"{directory} was left by a host that is no longer running; remove it "
        f"(rm -r {shlex.quote(os.fspath(directory))}){alternative}"
    )


def _directory_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot become a host's directory (one line, saying what to do), or
    ``None`` if it can: it does not exist (it will be created) or is an empty directory.

    A directory whose ``host`` socket refuses connections was left by a host that was killed
    (SIGKILL: no chance to clean up). It is reported rather than taken over: nothing tells
    a dead host's directory from one whose host is starting right now.
    """
    try:
        mode = directory.stat().st_mode
        if not stat.S_ISDIR(mode):
            return f"{directory} exists and is not a directory; choose another --dir"
        if not any(directory.iterdir()):
            return None
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot use {directory}: {exc.strerror or exc}; choose another --dir"
    control = directory / "host"
    if control.is_socket():
        try:
            _host_pid(directory)
        except ConnectionRefusedError:
            return _stale_hint(directory, " or choose another --dir")
        except BlockingIOError:
            pass  # a host is there, only busy
        except OSError:
            return f"{directory} is not empty; empty or remove it, or choose another --dir"
        return (
            f"a simulated host is already running at {directory}; stop it (trio-vchan "
            f"sim --dir {shlex.quote(os.fspath(directory))} --stop) or choose another --dir"
        )
    return f"{directory} is not empty; empty or remove it, or choose another --dir"


def _absolute(directory: str) -> Path:
    return Path(directory).absolute()


def _no_host_reason(directory: str, exc: OSError) -> str | None:
    """Say why no host runs at ``directory``, if that is what ``exc`` means."""
    if isinstance(exc, ConnectionRefusedError):
        return _stale_hint(directory)
    if exc.errno in (errno.ENOENT, errno.ENOTSOCK):
        return f"no simulated host is running at {directory} ({exc.strerror or exc})"
    return None


def _running_host_dir(option: str, args: argparse.Namespace, command: list[str]) -> str | None:
    """The directory an option acting on a running host names; None (said why) if none."""
    if command:
        print(f"trio-vchan sim: {option} takes no COMMAND", file=sys.stderr)
        return None
    directory: str | None = args.dir or os.environ.get(ENV_DIR)
    if not directory:
        print(f"trio-vchan sim: {option} needs --dir DIR or {ENV_DIR}", file=sys.stderr)
    return directory


async def _run_destroy(args: argparse.Namespace, command: list[str]) -> int:
    directory = _running_host_dir("--destroy", args, command)
    if directory is None:
        return 2
    try:
        await destroy_domain(directory, args.destroy)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
            reason = f"no simulated host is running at {directory} ({reason})"
        print(f"trio-vchan sim: cannot destroy domain {args.destroy}: {reason}", file=sys.stderr)
        return 1
    return 0


async def _run_stop(args: argparse.Namespace, command: list[str]) -> int:
    directory = _running_host_dir("--stop", args, command)
    if directory is None:
        return 2
    try:
        pid = _host_pid(directory)
        await _terminate_and_wait(pid)
    except OSError as exc:
        reason = _no_host_reason(directory, exc) or (exc.strerror or str(exc))
        print(f"trio-vchan sim: cannot stop the host: {reason}", file=sys.stderr)
        return 1
    return 0


async def _terminate_and_wait(pid: int) -> None:
    """Send SIGTERM to process ``pid`` (not our child) and wait until it has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel): poll
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            while True:
                await trio.sleep(_POLL)
                os.kill(pid, 0)
        return
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)  # the pid cannot be reused meanwhile
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def _command_domid(args: argparse.Namespace) -> int:
    """COMMAND's domain: ``--domid``, else ``TRIO_VCHAN_DOMID`` if set, else 0.

    Raises:
        ValueError: ``TRIO_VCHAN_DOMID`` is not a valid domain id.
    """
    if args.domid is not None:
        return int(args.domid)
    text = os.environ.get(ENV_DOMID)
    return parse_domid(text) if text else 0


def _usage_problem(args: argparse.Namespace, command: list[str]) -> str | None:
    """What is wrong with the combination of options (one line), or None."""
    if args.join and not command:
        return "--join needs a COMMAND to run (trio-vchan sim --join -- COMMAND ...)"
    if args.join and args.name:
        return "--name names the domains of a host being started, not with --join"
    if (args.join or args.stop or args.destroy is not None) and args.max_event_channels is not None:
        return "--max-event-channels configures a host being started"
    if args.xen_libs and not command:
        return (
            "--xen-libs preloads the shim into a COMMAND; give one after --, or join a "
            "running host with trio-vchan sim --join --xen-libs -- COMMAND ..."
        )
    if args.domid is not None and not command and not args.background:
        return "--domid is the domain of COMMAND (or, with --background, of the exports)"
    return None


def _cannot_run(command: list[str], exc: OSError) -> int:
    print(f"trio-vchan sim: cannot run {command[0]!r}: {exc}", file=sys.stderr)
    return 127


def _xen_libs_problem(args: argparse.Namespace) -> int | None:
    """With ``--xen-libs``, 127 (said why) if the shim is not installed; else None."""
    problem = xen_libs_missing() if args.xen_libs else None
    if problem is None:
        return None
    print(f"trio-vchan sim: --xen-libs: {problem}", file=sys.stderr)
    return 127


def _command_domain(args: argparse.Namespace) -> tuple[int, int | None]:
    """The domain COMMAND runs as, and the exit status to stop with (said on stderr) where
    --domid or --xen-libs cannot be used, else None."""
    try:
        domid = _command_domid(args)
    except ValueError as exc:
        print(f"trio-vchan sim: {exc}", file=sys.stderr)
        return 0, 2
    return domid, _xen_libs_problem(args)


async def _run_join(args: argparse.Namespace, command: list[str]) -> int:
    """Become COMMAND, as a domain of the running host (which gets the domain first)."""
    directory = args.dir or os.environ.get(ENV_DIR)
    if not directory:
        print(f"trio-vchan sim: --join needs --dir DIR or {ENV_DIR}", file=sys.stderr)
        return 2
    domid, failed = _command_domain(args)
    if failed is not None:
        return failed
    directory = os.fspath(_absolute(directory))
    try:
        await _control_request(directory, Op.INTRODUCE_DOMAIN, domid)
    except OSError as exc:
        reason = _no_host_reason(directory, exc) or (exc.strerror or str(exc))
        print(f"trio-vchan sim: cannot join as domain {domid}: {reason}", file=sys.stderr)
        return 1
    env = program_environ(os.environ, directory, domid, xen_libs=args.xen_libs)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        return _cannot_run(command, exc)


async def _run_background(args: argparse.Namespace, command: list[str]) -> int:
    """Start ``trio-vchan sim [--dir DIR]`` detached (a session of its own, its output to a
    pipe that only we read), wait for its ``TRIO_VCHAN_SIM=`` line, print the exports."""
    if command:
        print("trio-vchan sim: --background takes no COMMAND", file=sys.stderr)
        return 2
    try:
        domid = _command_domid(args)
    except ValueError as exc:
        print(f"trio-vchan sim: {exc}", file=sys.stderr)
        return 2
    argv = [sys.executable, *(["-P"] if getattr(sys.flags, "safe_path", False) else [])]
    argv += ["-m", "trio_vchan", "sim"]
    if args.dir:
        directory = _absolute(args.dir)
        problem = _directory_problem(directory)
        if problem:
            print(f"trio-vchan sim: {problem}", file=sys.stderr)
            return 2
        argv += ["--dir", os.fspath(directory)]
    try:
        _configured(None, args)  # the checks, before the host starts
    except ValueError as exc:
        print(f"trio-vchan sim: {exc}", file=sys.stderr)
        return 2
    for domid, name in args.name:
        argv += ["--name", f"{domid}={name}"]
    if args.max_event_channels is not None:
        argv += ["--max-event-channels", str(args.max_event_channels)]
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    prefix = f"{ENV_DIR}=".encode()
    pending = b""
    async with process.stdout:
        while True:
            chunk = await process.stdout.receive_some()
            if not chunk:  # it exited without starting: pass on what it said
                sys.stderr.write(pending.decode(errors="replace"))
                return await process.wait() or 1
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.startswith(prefix):
                    return await _export(os.fsdecode(line[len(prefix) :]), domid)
                sys.stderr.write(line.decode(errors="replace") + "\n")


async def _export(directory: str, domid: int) -> int:
    """Print the ``export`` lines for the background host at ``directory``."""
    if domid:
        try:
            await _control_request(directory, Op.INTRODUCE_DOMAIN, domid)
        except OSError as exc:
            print(f"trio-vchan sim: cannot create domain {domid}: {exc}", file=sys.stderr)
            return 1
    for name, value in xen_environ(directory, domid).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


async def _end_group(pgid: int) -> None:
    """End what is left of process group ``pgid``: SIGTERM, then SIGKILL after a grace."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    with trio.move_on_after(GROUP_GRACE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            while True:  # nothing tells us when processes we did not start exit: poll
                await trio.sleep(_POLL)
                os.killpg(pgid, 0)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run(args: argparse.Namespace) -> int:
    """Run the subcommand; return the exit status."""
    command: list[str] = list(args.command or [])
    if command[:1] == ["--"]:
        command = command[1:]
    problem = _usage_problem(args, command)
    if problem is not None:
        print(f"trio-vchan sim: {problem}", file=sys.stderr)
        return 2
    if args.join:
        return await _run_join(args, command)
    if args.destroy is not None:
        return await _run_destroy(args, command)
    if args.stop:
        return await _run_stop(args, command)
    if args.background:
        return await _run_background(args, command)
    domid = 0
    if command:
        domid, failed = _command_domain(args)
        if failed is not None:
            return failed
    if args.dir:
        problem = _directory_problem(_absolute(args.dir))
        if problem:
            print(f"trio-vchan sim: {problem}", file=sys.stderr)
            return 2
    try:
        configured = _configured(args.dir, args)
    except ValueError as exc:
        print(f"trio-vchan sim: {exc}", file=sys.stderr)
        return 2
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with contextlib.AsyncExitStack() as stack:
            try:
                host = await stack.enter_async_context(configured)
            except (ValueError, OSError) as exc:
                reason = str(exc) if isinstance(exc, ValueError) else (exc.strerror or str(exc))
                if not args.dir:
                    print(f"trio-vchan sim: cannot start a host: {reason}", file=sys.stderr)
                    return 1
                print(
                    f"trio-vchan sim: cannot start a host in {args.dir}: {reason}; "
                    "choose another --dir",
                    file=sys.stderr,
                )
                return 2
            if not command:
                print(f"{ENV_DIR}={host.directory}", flush=True)
                async for _ in signals:
                    return 0
            host.add_domain(domid)
            env = program_environ(os.environ, host.directory, domid, xen_libs=args.xen_libs)
            async with trio.open_nursery() as nursery:

                async def kill_group_later() -> None:
                    await trio.sleep(GROUP_GRACE)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)

                async def forward_signals() -> None:
                    # To the whole group, as a terminal sends Ctrl-C to its foreground job.
                    # SIGTERM asks the host to stop: a COMMAND that outlives the grace is killed.
                    async for signum in signals:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(process.pid, signum)
                        if signum == signal.SIGTERM:
                            nursery.start_soon(kill_group_later)

                try:
                    process = await trio.lowlevel.open_process(
                        command, env=env, start_new_session=True
                    )
                except OSError as exc:
                    return _cannot_run(command, exc)
                nursery.start_soon(forward_signals)
                try:
                    status = await process.wait()
                finally:
                    nursery.cancel_scope.cancel()
                    with trio.CancelScope(shield=True):
                        await _end_group(process.pid)
            return 128 - status if status < 0 else status
    return 0  # unreachable: the signal iterator never ends
