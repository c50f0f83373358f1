"""``vchan-socket-proxy``: Xen's program of that name, with the same command line, on trio-vchan.

libxl starts Xen's ``vchan-socket-proxy`` to reach QEMU's QMP socket in a stub domain, as
``vchan-socket-proxy --state-path=/local/domain/0/device-model/<dm>/qmp-proxy-state <dm>
/local/domain/<dm>/device-model/<guest>/qmp-vchan /var/run/xen/qmp-libxl-<guest>`` (see
``tools/libs/light/libxl_dm.c``), and waits for ``running`` at the state path. This command takes
that form (``[-m client|server] [-s STATE_PATH] [-v] DOMID NODEPATH SOCKET``) with the C
program's meanings, so it can be put in its place: installed as the ``vchan-socket-proxy``
console script, and as ``trio-vchan vchan-socket-proxy``. What differs is in docs/cli.rst.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Final, NoReturn

import attrs
import trio

from .. import _api
from .._advertisement import PeerGoneError
from .._backend import Backend
from .._errors import ProtocolError, XenStoreError
from .._session import Session
from .._stream import VchanStream
from ._bridge import Local
from ._options import domain
from ._platform import open_backend, resolve_domain
from ._proxy import ProxyLog, forward, socket_end
from ._signals import run_interruptible
from ._sockets import UnixAddress, reason
from ._status import CommandError, ExitStatus, describe
from ._stdio import open_stdin, open_stdout
from ._waiting import check_other_domain, refused

PROG: Final = "vchan-socket-proxy"
#: The most bytes moved at once, either way (the C program's buffers are 8 KiB).
CHUNK_SIZE: Final = 65536

DESCRIPTION = """\
Xen's vchan-socket-proxy, on trio-vchan: the same command line, the same meanings.

client (the default): the vchan client of the server in domain DOMID at XenStore path
NODEPATH. SOCKET is
  PATH  listen on this Unix socket; connect to the vchan for each connection accepted,
        one after another, until terminated
  N     the same, on the listening socket inherited as file descriptor N (socket
        activation)
  -     connect to the vchan at once and relay standard input and output; exit when
        either ends

server (-m server): serve the vchan at NODEPATH to domain DOMID. SOCKET is
  PATH  for each vchan connection, connect to this Unix socket, one after another, until
        terminated
  N     relay the vchan and file descriptor N; exit when either ends
  -     relay the vchan and standard input and output; exit when either ends

A relative NODEPATH or STATE_PATH is relative to this domain's home in XenStore
(/local/domain/<own domid>/), as for the C program. DOMID may also be a domain's name.
"""

EPILOG = """\
examples:
  # as libxl starts it in dom0 for the QMP socket of guest 2 whose device model runs in
  # stub domain 3:
  vchan-socket-proxy --state-path=/local/domain/0/device-model/3/qmp-proxy-state 3 \\
      /local/domain/3/device-model/2/qmp-vchan /var/run/xen/qmp-libxl-2
  # in domain 3: serve that vchan to dom0 and relay it to QEMU's socket
  vchan-socket-proxy -m server 0 /local/domain/3/device-model/2/qmp-vchan /run/qmp.sock

exit status:
  0    SOCKET - or N: the vchan or the local end closed
  1    a failure (the domain DOMID is gone, a socket cannot be listened on or connected
       to, XenStore refused the state path), or a bad command line (as the C program)
  130  stopped by SIGINT (Ctrl-C); 143: SIGTERM. Open connections were closed cleanly.
"""


class _Parser(argparse.ArgumentParser):
    """Exits with status 1 for a bad command line, as the C program's usage() does."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitStatus.FAILURE, f"{self.prog}: error: {message}\n")


@attrs.frozen
class _Stdio:
    """SOCKET ``-``: standard input and output."""

    def __str__(self) -> str:
        return "stdin/stdout"


@attrs.frozen
class _Inherited:
    """SOCKET ``N``: a file descriptor this process was started with."""

    fd: int

    def __str__(self) -> str:
        return f"file descriptor {self.fd}"


_Socket = _Stdio | _Inherited | UnixAddress


def _socket(text: str) -> _Socket:
    """Parse SOCKET: ``-``, a file descriptor number, or a Unix socket path."""
    if text == "-":
        return _Stdio()
    if text.isascii() and text.isdigit():
        return _Inherited(int(text))
    if not text:
        raise argparse.ArgumentTypeError("the socket path is empty")
    return UnixAddress(text)


def _xenstore_path(text: str) -> str:
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"not a XenStore path: {text!r}")
    return text


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line of Xen's vchan-socket-proxy (getopt's ``m:vs:`` and long options)."""
    parser = _Parser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-m",
        "--mode",
        choices=("client", "server"),
        default="client",
        help="the vchan side to take (default: client)",
    )
    parser.add_argument(
        "-s",
        "--state-path",
        metavar="PATH",
        help='write "running" to this XenStore path once ready (as libxl waits for)',
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="say on stderr what each connection does"
    )
    parser.add_argument(
        "domain", type=domain, metavar="DOMID", help="the other domain: its id or its name"
    )
    parser.add_argument(
        "nodepath", type=_xenstore_path, metavar="NODEPATH", help="the vchan's XenStore path"
    )
    parser.add_argument(
        "socket", type=_socket, metavar="SOCKET", help="a Unix socket path, a descriptor N, or -"
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run ``vchan-socket-proxy`` with ``argv`` (default: ``sys.argv[1:]``); return the status."""
    from ._main import run_command  # the one place that runs a command and reports its error

    args = build_parser(prog).parse_args(argv)
    return run_command(prog, partial(run, prog=prog), args)


async def run(args: argparse.Namespace, prog: str = PROG) -> int:
    """Run the proxy until its session ends or it is stopped; return the exit status."""
    log = ProxyLog(quiet=not args.verbose, prog=prog)
    try:
        return await run_interruptible(partial(_run, args, log))
    except CommandError as exc:
        exc.status = ExitStatus.FAILURE  # the C program has no other failure status
        raise


def _absolute(path: str, own_domid: int) -> str:
    """A XenStore path as the store reads it: a relative one is below this domain's home."""
    return path if path.startswith("/") else f"/local/domain/{own_domid}/{path}"


async def _run(args: argparse.Namespace, log: ProxyLog) -> int:
    with open_backend(None) as backend:
        peer = await resolve_domain(args.domain, backend)
        check_other_domain(backend.domid, peer)
        path = _absolute(args.nodepath, backend.domid)
        state_path = None if args.state_path is None else _absolute(args.state_path, backend.domid)
        if args.mode == "server":
            return await _server(peer, path, args.socket, state_path, backend, log)
        return await _client(peer, path, args.socket, state_path, backend, log)


async def _announce(state_path: str | None, backend: Backend) -> None:
    """Write ``running`` to ``state_path``: the proxy is ready (libxl waits for it)."""
    if state_path is None:
        return
    session = Session.join(backend)
    try:
        xs = await session.xenstore()
        await xs.write(state_path, b"running")
    except XenStoreError as exc:
        raise CommandError(
            f'cannot write "running" to the state path {state_path} in XenStore: {exc};'
            " check the path and that this domain may write there"
        ) from None
    finally:
        with trio.CancelScope(shield=True):
            await session.leave()


# -- client mode ----------------------------------------------------------------------------------


async def _client(
    server: int,
    path: str,
    where: _Socket,
    state_path: str | None,
    backend: Backend,
    log: ProxyLog,
) -> int:
    if isinstance(where, _Stdio):
        await _announce(state_path, backend)
        vchan = await _connect_vchan(server, path, backend)
        async with vchan:
            return await _relay_stdio(vchan, log)
    async with _listening(where) as listener:
        await _announce(state_path, backend)
        log.note(f"listening on {where}, forwarding to {path} of domain {server}")
        while True:
            sock = await listener.accept()
            async with sock:
                number = log.next_number()
                try:
                    vchan = await _connect_vchan(server, path, backend)
                except (OSError, ProtocolError) as exc:  # a bad advertisement: wait for the next
                    log.failure(
                        f"connection {number}: cannot connect to the vchan: {describe(exc)}"
                    )
                    continue
                async with vchan:
                    await forward(number, vchan, socket_end(sock), CHUNK_SIZE, log)


async def _connect_vchan(server: int, path: str, backend: Backend) -> VchanStream:
    """Connect to the vchan, waiting for its server; exit (status 1) if its domain is gone."""
    try:
        return await _api.open_vchan_stream(server, path, backend=backend)
    except PeerGoneError as exc:
        raise CommandError(
            f"cannot connect to the vchan at {path}: {describe(exc)}; nothing more to serve"
        ) from None


@asynccontextmanager
async def _listening(where: UnixAddress | _Inherited) -> AsyncIterator[trio.SocketListener]:
    """The listening socket of client mode: bound at a path (and removed after), or inherited."""
    if isinstance(where, _Inherited):
        inherited = _inherited_listener(where.fd)
        async with inherited:
            yield inherited
    else:
        async with where.listen() as (listener,):
            yield listener


def _inherited_listener(fd: int) -> trio.SocketListener:
    """Descriptor ``fd`` as a listener; it must be a stream socket that listens.

    Raises:
        CommandError: it is not open, not a socket, or not listening.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise CommandError(
            f"SOCKET {fd}: file descriptor {fd} is not an open socket ({exc.strerror}); pass"
            " a listening socket as that descriptor, or give a socket path"
        ) from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        sock.detach()
        raise CommandError(f"SOCKET {fd}: cannot use file descriptor {fd}: {exc}") from None
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise CommandError(
            f"SOCKET {fd}: file descriptor {fd} is not a stream socket that listens; in client"
            " mode a descriptor must be a listening socket (socket activation)"
        )
    sock.setblocking(False)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


# -- server mode ----------------------------------------------------------------------------------


async def _server(
    client: int,
    path: str,
    where: _Socket,
    state_path: str | None,
    backend: Backend,
    log: ProxyLog,
) -> int:
    async with _api.VchanListener(client, path, backend=backend) as listener:
        await _announce(state_path, backend)
        log.note(f"serving {path} to domain {client}, forwarding to {where}")
        while True:
            try:
                vchan = await listener.accept()
            except XenStoreError as exc:
                raise refused(exc) or exc from None
            async with vchan:
                if isinstance(where, _Stdio):
                    return await _relay_stdio(vchan, log)
                if isinstance(where, _Inherited):
                    return await _relay_fd(vchan, where.fd, log)
                try:
                    sock = await where.connect()
                except OSError as exc:
                    raise CommandError(
                        f"cannot connect to the Unix socket {where}: {reason(exc)};"
                        " start its server first"
                    ) from None
                async with sock:
                    await forward(log.next_number(), vchan, socket_end(sock), CHUNK_SIZE, log)


async def _relay(vchan: VchanStream, local: Local, log: ProxyLog) -> int:
    """Relay one connection for the rest of the run: status 1 if it failed (already said)."""
    ending = await forward(log.next_number(), vchan, local, CHUNK_SIZE, log)
    return ExitStatus.FAILURE if ending is None else ExitStatus.OK


async def _relay_stdio(vchan: VchanStream, log: ProxyLog) -> int:
    stdin, stdout = open_stdin(), open_stdout()
    async with stdin, stdout:
        return await _relay(vchan, Local(stdin, stdout, "stdin", "stdout"), log)


async def _relay_fd(vchan: VchanStream, fd: int, log: ProxyLog) -> int:
    try:
        stream = trio.lowlevel.FdStream(fd)
    except OSError as exc:
        raise CommandError(
            f"SOCKET {fd}: file descriptor {fd} is not open ({exc.strerror})"
        ) from None
    async with stream:
        name = f"file descriptor {fd}"
        return await _relay(vchan, Local(stream, stream, name, name), log)
