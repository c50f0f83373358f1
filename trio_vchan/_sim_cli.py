"""The ``trio-vchan sim`` subcommand: run a simulated host, optionally around one command;
or destroy a domain of a running host."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ._backend import check_domid
from ._sim._host import SimulatedHost
from ._sim._platform import ENV_DIR, ENV_DOMID, parse_domid
from ._sim._proto import MESSAGE_MAX, Op, Reply, Request

if TYPE_CHECKING:
    from collections.abc import Sequence


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
Run a simulated Xen host until interrupted, printing TRIO_VCHAN_SIM=<dir>; or run COMMAND
inside it (with TRIO_VCHAN_SIM set, and TRIO_VCHAN_DOMID=0 unless it is already set) and exit
with its status.

With --destroy DOMID, destroy domain DOMID of a running host instead, as `xl destroy` does:
the host performs the unmap-notifies of the domain's shares and mappings, closes its event
channels (their remote ends see the peer close), drops its connections, removes
/local/domain/DOMID from XenStore and fires @releaseDomain. Its processes keep running, cut
off. The domain id can then join again as a fresh domain.
"""

EPILOG = """\
examples:
  trio-vchan sim -- sh -c 'trio-vchan cat --domid 2 -l 1 foo > copy &
                           trio-vchan cat --domid 1 2 foo < foo; wait'
  trio-vchan sim --dir /tmp/host &            # a host that others join
  trio-vchan sim --dir /tmp/host --destroy 2  # destroy its domain 2
  trio-vchan sim --destroy 2                  # inside a host: TRIO_VCHAN_SIM names it

exit status (--destroy): 0 destroyed; 1 no such domain, domain 0, or no host there;
2 a bad command line
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the subcommand's options to ``parser``."""
    parser.add_argument(
        "--dir",
        metavar="DIR",
        help=(
            "the host's directory (created, must be empty; default: a private temporary one); "
            "with --destroy, the running host's (default: $TRIO_VCHAN_SIM)"
        ),
    )
    parser.add_argument(
        "--destroy",
        metavar="DOMID",
        type=_destroy_domid,
        help="destroy domain DOMID of the running host, then exit",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="a command to run"
    )


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
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    with sock:
        await sock.connect(os.fspath(Path(directory) / "host"))
        await sock.send(Request(Op.DESTROY_DOMAIN, (domid, 0, 0)).encode())
        data = await sock.recv(MESSAGE_MAX)
    if not data:
        raise OSError(errno.EPIPE, "the simulated host hung up")
    try:
        reply = Reply.decode(data)
    except ValueError as exc:
        raise OSError(errno.EPROTO, f"the simulated host sent a bad reply: {exc}") from None
    if reply.status:
        raise OSError(reply.status, reply.message)


async def _run_destroy(args: argparse.Namespace, command: list[str]) -> int:
    if command:
        print("trio-vchan sim: --destroy takes no COMMAND", file=sys.stderr)
        return 2
    directory = args.dir or os.environ.get(ENV_DIR)
    if not directory:
        print(f"trio-vchan sim: --destroy needs --dir DIR or {ENV_DIR}", file=sys.stderr)
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


async def run(args: argparse.Namespace) -> int:
    """Run the subcommand; return the exit status."""
    command: list[str] = list(args.command or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if args.destroy is not None:
        return await _run_destroy(args, command)
    domid = 0
    if command and os.environ.get(ENV_DOMID):
        try:
            domid = parse_domid(os.environ[ENV_DOMID])
        except ValueError as exc:
            print(f"trio-vchan sim: {exc}", file=sys.stderr)
            return 2
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with SimulatedHost(args.dir) as host:
            if not command:
                print(f"{ENV_DIR}={host.directory}", flush=True)
                async for _ in signals:
                    return 0
            env = {**os.environ, **host.environ(domid)}
            async with trio.open_nursery() as nursery:

                async def forward_signals() -> None:
                    async for signum in signals:
                        process.send_signal(signum)

                try:
                    process = await trio.lowlevel.open_process(command, env=env)
                except OSError as exc:
                    print(f"trio-vchan sim: cannot run {command[0]!r}: {exc}", file=sys.stderr)
                    return 127
                nursery.start_soon(forward_signals)
                try:
                    status = await process.wait()
                finally:
                    nursery.cancel_scope.cancel()
            return 128 - status if status < 0 else status
    return 0  # unreachable: the signal iterator never ends


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trio_vchan._sim_cli [--dir DIR] [-- COMMAND ...]`` (or ``--destroy DOMID``)."""
    parser = argparse.ArgumentParser(
        prog="trio-vchan sim",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(parser)
    return trio.run(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
