"""The socket end of ``trio-vchan proxy``: a Unix socket path or a TCP address."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, Protocol

import attrs
import trio

_BACKLOG: Final = 64


class Address(Protocol):
    """Where the proxy connects to, or listens on, for the socket end."""

    async def connect(self) -> trio.SocketStream:
        """Open a connection.

        Raises:
            OSError: refused, unreachable, or no such socket.
        """
        ...

    def listen(self) -> contextlib.AbstractAsyncContextManager[list[trio.SocketListener]]:
        """Listen (and stop listening at the end of the block)."""
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
    async def listen(self) -> AsyncIterator[list[trio.SocketListener]]:
        """Bind ``path`` (which must not exist) and remove it at the end."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(self.path)
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
    async def listen(self) -> AsyncIterator[list[trio.SocketListener]]:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host, backlog=_BACKLOG)
        try:
            yield listeners
        finally:
            for listener in listeners:
                listener.socket.close()


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
