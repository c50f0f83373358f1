"""The socket end of ``trio-vchan proxy``: a Unix socket path or a TCP address.

Failing to listen is a :class:`CommandError` that names the address and what to do; failing to
connect is an ``OSError``, which :func:`reason` puts in the OS's words.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, Protocol

import attrs
import trio

from ._status import CommandError, leaves

_BACKLOG: Final = 64


def reason(exc: OSError) -> str:
    """Why ``exc`` happened, in the OS's words (no ``[Errno N]``); for trio's "all attempts to
    connect ... failed", the reasons of the attempts."""
    if exc.strerror:
        return exc.strerror
    found: list[str] = []
    for leaf in leaves(exc.__cause__) if exc.__cause__ is not None else []:
        if isinstance(leaf, OSError) and leaf.strerror and leaf.strerror not in found:
            found.append(leaf.strerror)
    return "; ".join(found) or str(exc)


async def _listener_at(path: str) -> bool | None:
    """Whether something accepts connections at Unix socket ``path`` (None: not a socket)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return None
    except FileNotFoundError:
        return False
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            await probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True  # (EAGAIN: its backlog is full) someone is there
    return True


class Address(Protocol):
    """Where the proxy connects to, or listens on, for the socket end."""

    async def connect(self) -> trio.SocketStream:
        """Open a connection.

        Raises:
            OSError: refused, unreachable, or no such socket.
        """
        ...

    def listen(
        self, *, unlink_stale: bool = False, stale_hint: str = ""
    ) -> contextlib.AbstractAsyncContextManager[list[trio.SocketListener]]:
        """Listen (and stop listening at the end of the block).

        Args:
            unlink_stale: (a Unix socket) first remove a socket left at the path that nobody
                listens on.
            stale_hint: (a Unix socket) how to ask for that, for the message when it is not.

        Raises:
            CommandError: it cannot listen; the message names the address and what to do.
        """
        ...


def _describe(sockname: object) -> str:
    if isinstance(sockname, tuple):  # (host, port) or (host, port, flowinfo, scope_id)
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(sockname)


def describe_listeners(listeners: list[trio.SocketListener]) -> str:
    """The addresses the listeners are bound to (TCP port 0 becomes the port chosen)."""
    return ", ".join(_describe(listener.socket.getsockname()) for listener in listeners)


@attrs.frozen
class UnixAddress:
    """A Unix stream socket at ``path``."""

    path: str

    def __str__(self) -> str:
        return self.path

    async def connect(self) -> trio.SocketStream:
        return await trio.open_unix_socket(self.path)

    @asynccontextmanager
    async def listen(
        self, *, unlink_stale: bool = False, stale_hint: str = ""
    ) -> AsyncIterator[list[trio.SocketListener]]:
        """Bind ``path`` (which must not exist) and remove it at the end."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await self._bind(sock, unlink_stale, stale_hint)
        except BaseException:
            sock.close()
            raise
        try:
            sock.listen(_BACKLOG)
            yield [trio.SocketListener(sock)]
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _bind(self, sock: trio.socket.SocketType, unlink_stale: bool, hint: str) -> None:
        try:
            await sock.bind(self.path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise self._cannot(self._why(exc)) from None
        else:
            return
        there = await _listener_at(self.path)
        if there is None:
            raise self._cannot(
                "a file that is not a socket is there; remove it or choose another path"
            )
        if there:
            raise self._cannot("another process listens there; stop it or choose another path")
        if not unlink_stale:
            hint = f", or {hint}" if hint else ""
            raise self._cannot(
                "a socket is left there that nobody listens on (by a proxy that crashed?);"
                f" remove it (rm {self.path}){hint}"
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        try:
            await sock.bind(self.path)
        except OSError as exc:
            raise self._cannot(self._why(exc)) from None

    def _why(self, exc: OSError) -> str:
        directory = os.path.dirname(self.path) or "."
        if exc.errno == errno.ENOENT:
            return f"the directory {directory} does not exist; create it or choose another path"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"{reason(exc)} (creating a file in {directory}); choose another path"
        return reason(exc)

    def _cannot(self, why: str) -> CommandError:
        return CommandError(f"cannot listen on the Unix socket {self.path}: {why}")


@attrs.frozen
class TcpAddress:
    """A TCP address (a name, or an IPv4 or IPv6 address, and a port)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(self.host, self.port)

    @asynccontextmanager
    async def listen(
        self, *, unlink_stale: bool = False, stale_hint: str = ""
    ) -> AsyncIterator[list[trio.SocketListener]]:
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host, backlog=_BACKLOG)
        except OSError as exc:
            raise CommandError(f"cannot listen on TCP {self}: {self._why(exc)}") from None
        try:
            yield listeners
        finally:
            for listener in listeners:
                listener.socket.close()

    def _why(self, exc: OSError) -> str:
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve the host {self.host!r}: {reason(exc)}"
        if exc.errno == errno.EADDRINUSE:
            return (
                f"another process listens on port {self.port}; stop it or choose another port"
                " (:0 takes a free one)"
            )
        if exc.errno == errno.EADDRNOTAVAIL:
            return (
                f"no interface of this machine has the address {self.host}; use 127.0.0.1,"
                " 0.0.0.0 (every interface) or an address of this machine"
            )
        if exc.errno in (errno.EACCES, errno.EPERM) and 0 < self.port < 1024:
            return f"{reason(exc)}: ports below 1024 need privileges; choose another port"
        return reason(exc)


def unix_address(text: str) -> UnixAddress:
    """Parse ``--unix PATH`` for argparse.

    Raises:
        argparse.ArgumentTypeError: an empty path.
    """
    if not text:
        raise argparse.ArgumentTypeError("the socket path is empty")
    return UnixAddress(text)


def tcp_address(text: str) -> TcpAddress:
    """Parse ``--tcp [HOST]:PORT`` for argparse (IPv6 in brackets; no host: 127.0.0.1).

    Listening on every interface must be asked for (``0.0.0.0:PORT``, ``[::]:PORT``): a
    proxy exposes a domain's service to whoever can connect.

    Raises:
        argparse.ArgumentTypeError: no port, a port outside 0..65535, or a bad host.
    """
    host, colon, port_text = text.rpartition(":")
    if not colon or not port_text.isascii() or not port_text.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or :PORT, not {text!r}")
    port = int(port_text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 0..65535, not {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 host in brackets: [{host}]:{port}")
    return TcpAddress(host or "127.0.0.1", port)
