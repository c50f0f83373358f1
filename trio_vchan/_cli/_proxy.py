"""``trio-vchan proxy``: forward connections between vchans and a socket.

Like Xen's vchan-socket-proxy: a connection that arrives on one side is forwarded as a new
connection on the other side, so the socket end always does the opposite of the vchan end.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Final, TextIO, final

import trio

from .. import _api
from .._backend import Backend
from .._errors import ProtocolError
from .._stream import VchanStream
from ._bridge import Ending, Local, LocalError, Transfer, bridge
from ._options import (
    add_domain_options,
    add_output_options,
    add_wait_options,
    domains,
    handshake_timeout,
    port,
    subcommand_parser,
)
from ._platform import open_backend, resolve_domain
from ._progress import summary
from ._signals import run_interruptible
from ._sockets import Address, UnixAddress, describe_listeners, reason, tcp_address, unix_address
from ._status import CommandError, ExitStatus, describe
from ._waiting import GaveUp, Wait, check_other_domain, waiting

DESCRIPTION = """\
Forward connections between vchans and a Unix or TCP socket, as Xen's vchan-socket-proxy.

With -l, this domain serves vchan PORT to the client domains listed: every vchan connection
from one of them is forwarded to a new connection to the socket (--unix PATH or --tcp
HOST:PORT), several at once. Without -l, the proxy listens on the socket: every connection
accepted there is forwarded to a new vchan connection to the server in domain DOMID, one
after another (others wait their turn).

A connection ends when either side closes (vchan has no half-close); the proxy runs until
interrupted. It prints a line for each connection on stderr, unless --quiet, and a line
when a domain keeps it waiting for more than a second. --timeout gives up: with -l, the
proxy exits if a domain listed has not connected once within SECONDS; without, a socket
connection whose vchan server is not there within SECONDS is closed, and the proxy goes on.
"""

EPILOG = """\
examples:
  # in dom0: let domains 1 and 2 reach the local web server through vchan port "web"
  trio-vchan proxy -l 1,2 web --tcp 127.0.0.1:80
  # in domain 1: make that port a local Unix socket, then use it
  trio-vchan proxy 0 web --unix /run/web.sock &
  curl --unix-socket /run/web.sock http://dom0/
  # TCP port 8080 of domain 1 (localhost only) leads to the server in domain 3
  trio-vchan proxy 3 api --tcp :8080

A --unix PATH that a crashed proxy left behind is reported; --unlink-stale replaces it.

exit status:
  1    the platform failed, or the socket cannot be listened on (a failed connection
       is only reported: the proxy goes on)
  2    bad command line, or a DOMID is this domain
  124  with -l: --timeout ran out before a domain listed had connected
  130  stopped by SIGINT (Ctrl-C); 143: SIGTERM. Open connections were closed cleanly.
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``proxy`` subcommand to ``subparsers``."""
    parser = subcommand_parser(
        subparsers,
        "proxy",
        help="forward connections between vchans and a Unix or TCP socket",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument(
        "-l",
        "--listen",
        action="store_true",
        help="serve the vchan to the domains DOMID,... and connect to the socket",
    )
    parser.add_argument(
        "peers",
        type=domains,
        metavar="DOMID[,DOMID...]",
        help="the server domain; with -l, the client domains (ids, or names as xl list shows)",
    )
    parser.add_argument(
        "port", type=port, metavar="PORT", help="the vchan's name ([a-zA-Z0-9_-]+) or path"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--unix",
        dest="target",
        type=unix_address,
        metavar="PATH",
        help="a Unix socket: connect to it with -l, else create it and listen",
    )
    target.add_argument(
        "--tcp",
        dest="target",
        type=tcp_address,
        metavar="[HOST]:PORT",
        help=(
            "a TCP address (default host 127.0.0.1; [::1] for IPv6; 0.0.0.0 for every"
            " interface): connect to it with -l, else listen on it (port 0: any free port)"
        ),
    )
    parser.add_argument(
        "--unlink-stale",
        action="store_true",
        help=(
            "without -l, with --unix: replace a socket left at PATH that nobody listens on"
            " (as socat's unlink-early, but never one in use)"
        ),
    )
    add_wait_options(
        parser,
        timeout_help=(
            "with -l, exit (status 124) if a domain listed has not connected once within"
            " SECONDS; without, close a socket connection whose vchan server is not there"
            " within SECONDS"
        ),
    )
    add_domain_options(parser)
    add_output_options(parser, progress_help="print a line for each connection (the default)")


async def run(args: argparse.Namespace) -> int:
    """Run ``trio-vchan proxy`` until interrupted; return the exit status."""
    if not args.listen and len(args.peers) > 1:
        raise CommandError(
            "only a listening proxy (-l) serves several domains; connect to one server",
            ExitStatus.USAGE,
        )
    if args.handshake_timeout is not None and not args.listen:
        raise CommandError(
            "--handshake-timeout is for the vchan server side: use it with -l", ExitStatus.USAGE
        )
    if args.unlink_stale and (args.listen or not isinstance(args.target, UnixAddress)):
        raise CommandError(
            "--unlink-stale is for a proxy that listens on --unix PATH (without -l)",
            ExitStatus.USAGE,
        )
    return await run_interruptible(partial(_proxy, args))


_ENDINGS: Final = {
    Ending.PEER_CLOSED: "the vchan peer closed",
    Ending.PEER_CLOSED_DURING_INPUT: "the vchan peer closed",
    Ending.INPUT_ENDED: "the socket end closed",
}


class ProxyLog:
    """A proxy's lines on stderr, and the connection numbers they name."""

    def __init__(
        self, quiet: bool, prog: str = "trio-vchan proxy", out: TextIO = sys.stderr
    ) -> None:
        self._quiet = quiet
        self._prog = prog
        self._out = out
        self._count = 0

    def next_number(self) -> int:
        self._count += 1
        return self._count

    def note(self, message: str) -> None:
        if not self._quiet:
            self.failure(message)

    def failure(self, message: str) -> None:
        print(f"{self._prog}: {message}", file=self._out, flush=True)


async def _proxy(args: argparse.Namespace) -> int:
    log = ProxyLog(quiet=args.progress is False)
    with open_backend(args.domid) as backend:
        peers = [await resolve_domain(peer, backend) for peer in args.peers]
        if len(set(peers)) != len(peers):
            raise CommandError(
                f"a domain is named twice in {','.join(map(str, args.peers))}"
                f" (domains {', '.join(map(str, peers))})",
                ExitStatus.USAGE,
            )
        for peer in peers:
            check_other_domain(backend.domid, peer)
        if args.listen:
            await _serve_vchan(args, peers, backend, log)
        else:
            await _serve_socket(args, peers[0], backend, log)
    return ExitStatus.OK  # not reached: both serve until cancelled


def socket_end(sock: trio.abc.Stream) -> Local:
    """A socket connection as the local end of a bridge."""
    return Local(sock, sock, "the socket", "the socket")


async def forward(
    number: int, vchan: VchanStream, local: Local, chunk_size: int, log: ProxyLog
) -> Ending | None:
    """Bridge one connection and report how it ended (None: it failed)."""
    transfer = Transfer()
    started = time.monotonic()
    log.note(f"connection {number}: open")
    try:
        ending = await bridge(vchan, local, chunk_size=chunk_size, transfer=transfer)
    except (trio.BrokenResourceError, LocalError) as exc:
        log.failure(f"connection {number}: {describe(exc)}")
        return None
    outcome = summary(transfer, time.monotonic() - started)
    log.note(f"connection {number}: {_ENDINGS[ending]}; {outcome}")
    return ending


async def _serve_vchan(
    args: argparse.Namespace, peers: list[int], backend: Backend, log: ProxyLog
) -> None:
    target: Address = args.target

    async def handle(vchan: VchanStream) -> None:
        number = log.next_number()
        async with vchan:
            try:
                sock = await target.connect()
            except OSError as exc:
                log.failure(f"connection {number}: cannot connect to {target}: {reason(exc)}")
                return
            async with sock:
                await forward(number, vchan, socket_end(sock), args.buffer_size, log)

    size: int = args.buffer_size
    listeners: list[trio.abc.Listener[VchanStream]] = []
    for peer in peers:
        try:
            listener = _api.VchanListener(
                peer,
                args.port,
                read_size=size,
                write_size=size,
                handshake_timeout=handshake_timeout(args.handshake_timeout),
                backend=backend,
            )
        except ValueError as exc:  # a bad argument that the command line let through
            raise CommandError(describe(exc), ExitStatus.USAGE) from None
        wait = Wait.between(backend.domid, peer, args.port, listening=True)
        listeners.append(_FirstWait(listener, wait, args.timeout, log.note, backend))
    domains = ", ".join(map(str, peers))
    plural = "s" if len(peers) > 1 else ""
    log.note(f"serving port {args.port!r} to domain{plural} {domains}, forwarding to {target}")
    await trio.serve_listeners(handle, listeners)


@final
class _FirstWait(trio.abc.Listener[VchanStream]):
    """A listener whose first accept says what it waits for, and gives up after ``timeout``.

    Later accepts wait for reconnections, which may come at any time: they are not timed.
    """

    def __init__(
        self,
        listener: trio.abc.Listener[VchanStream],
        wait: Wait,
        timeout: float | None,
        notify: Callable[[str], None],
        backend: Backend,
    ) -> None:
        self._listener = listener
        self._wait = wait
        self._timeout = timeout
        self._notify = notify
        self._backend = backend
        self._first = True

    async def accept(self) -> VchanStream:
        """The next connection.

        Raises:
            GaveUp: the first connection did not come within ``timeout``.
        """
        if not self._first:
            return await self._listener.accept()
        async with waiting(
            self._wait, give_up_after=self._timeout, notify=self._notify, backend=self._backend
        ) as connected:
            stream = await self._listener.accept()
            connected()
        self._first = False
        return stream

    async def aclose(self) -> None:
        await self._listener.aclose()


async def _serve_socket(
    args: argparse.Namespace, server: int, backend: Backend, log: ProxyLog
) -> None:
    target: Address = args.target
    wait = Wait.between(backend.domid, server, args.port, listening=False)
    turn = trio.Lock()  # one vchan connection at a time, as vchan-socket-proxy

    async def handle(sock: trio.SocketStream) -> None:
        async with sock, turn:
            number = log.next_number()
            notify = partial(_numbered, log.note, number)
            try:
                async with waiting(
                    wait, give_up_after=args.timeout, notify=notify, backend=backend
                ) as connected:
                    vchan = await _api.open_vchan_stream(server, args.port, backend=backend)
                    connected()
            except GaveUp as exc:
                log.failure(f"connection {number}: {exc}")
                return
            except (OSError, ProtocolError) as exc:
                log.failure(f"connection {number}: cannot connect to the vchan: {describe(exc)}")
                return
            async with vchan:
                await forward(number, vchan, socket_end(sock), args.buffer_size, log)

    async with target.listen(
        unlink_stale=args.unlink_stale, stale_hint="pass --unlink-stale to replace it"
    ) as listeners:
        where = describe_listeners(listeners)
        log.note(f"listening on {where}, forwarding to port {args.port!r} of domain {server}")
        await trio.serve_listeners(handle, listeners)


def _numbered(note: Callable[[str], None], number: int, message: str) -> None:
    note(f"connection {number}: {message}")
