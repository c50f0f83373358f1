"""The public entry points: serve, connect, listeners.

Setup itself lives in :mod:`trio_vchan._handshake`; this module checks arguments, joins the
process's shared :class:`~trio_vchan._session.Session`, and wraps endpoints as streams.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final, final

import trio

from ._backend import Backend, check_domid
from ._domains import Domain, check_domain, domain_id
from ._handshake import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    Endpoint,
    ServerPort,
    connect_endpoint,
    vchan_path,
)
from ._layout import choose_orders
from ._session import Session
from ._session import default_backend as default_backend
from ._stream import VchanStream

DEFAULT_RING_SIZE: Final = 65536


def _check_peer(session: Session, peer_domid: int, what: str) -> None:
    if peer_domid == session.backend.domid:
        raise ValueError(
            f"{what} {peer_domid} is this domain: a vchan connects two different domains"
        )


def _stream(session: Session, endpoint: Endpoint) -> VchanStream:
    """Wrap ``endpoint``; the stream holds one use of ``session`` until it closes."""
    stop_watching: Callable[[], None] = lambda: None  # noqa: E731

    async def closed() -> None:
        stop_watching()
        await session.leave()

    stream = VchanStream(endpoint, closed)
    stop_watching = session.watch_peer(endpoint.peer_domid, stream.peer_domain_destroyed)
    return stream


def _check_timeout(handshake_timeout: float | None) -> float | None:
    if handshake_timeout is not None and not handshake_timeout > 0:
        raise ValueError(f"handshake_timeout must be > 0 or None, not {handshake_timeout!r}")
    return handshake_timeout


async def lookup_domain(domain: Domain, *, backend: Backend | None = None) -> int:
    """The id of ``domain``: an id as it is, a name looked up in XenStore.

    A name is a domain's ``/local/domain/<domid>/name``, as ``xl list`` and Qubes show it.

    Raises:
        TypeError, ValueError: neither an id in range nor a possible name.
        DomainNameError: no domain, or several, have that name, or this domain may not list
            ``/local/domain`` (on Xen only dom0 and domains the toolstack allows may).
        BackendUnavailableError: no platform (only for a name).
    """
    checked = check_domain(domain)
    if isinstance(checked, int):
        return checked
    session = Session.join(backend)
    try:
        return await domain_id(checked, session.xenstore)
    finally:
        with trio.CancelScope(shield=True):
            await session.leave()


@asynccontextmanager
async def serve(
    client_domid: Domain,
    port: str | int,
    *,
    read_size: int = DEFAULT_RING_SIZE,
    write_size: int = DEFAULT_RING_SIZE,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    backend: Backend | None = None,
) -> AsyncIterator[VchanStream]:
    """Wait for one connection from ``client_domid`` on ``port``; yield it, close it after.

    One :meth:`VchanListener.accept`: the arguments are the listener's, but ``client_domid``
    may also be a domain name (see :func:`lookup_domain`).

    Raises:
        ValueError, TypeError: a bad domid, port, size or timeout, or our own domain.
        DomainNameError: ``client_domid`` is a name that names no one domain.
        BackendUnavailableError: no platform.
        OSError: ``EADDRINUSE``: another server of this domain serves this port.
        XenStoreError: the advertisement could not be written.
    """
    async with VchanListener(
        await lookup_domain(client_domid, backend=backend),
        port,
        read_size=read_size,
        write_size=write_size,
        handshake_timeout=handshake_timeout,
        backend=backend,
    ) as listener:
        stream = await listener.accept()
    async with stream:
        yield stream


async def open_vchan_stream(
    server_domid: Domain, port: str | int, *, backend: Backend | None = None
) -> VchanStream:
    """Connect to the vchan that ``server_domid`` (an id or a domain name, see
    :func:`lookup_domain`) serves for us on ``port``.

    Waits (watching XenStore) until the server has advertised it.

    Raises:
        ValueError, TypeError: a bad domid or port, or our own domain.
        DomainNameError: ``server_domid`` is a name that names no one domain.
        BackendUnavailableError: no platform.
        ProtocolError: the server's advertisement or shared page is invalid.
        PeerGoneError: the server's domain was destroyed while we waited.
        XenStoreError, OSError: XenStore or the platform refused.
    """
    check_domain(server_domid, "server_domid")
    vchan_path(0, 0, port)
    session = Session.join(backend)
    try:
        server = await domain_id(server_domid, session.xenstore, "server_domid")
        _check_peer(session, server, "server_domid")
        path = vchan_path(server, session.backend.domid, port)
        endpoint = await connect_endpoint(session.backend, session.advertisements, server, path)
    except BaseException:
        with trio.CancelScope(shield=True):
            await session.leave()
        raise
    return _stream(session, endpoint)


@asynccontextmanager
async def connect(
    server_domid: Domain, port: str | int, *, backend: Backend | None = None
) -> AsyncIterator[VchanStream]:
    """As :func:`open_vchan_stream`, closing the stream on exit."""
    stream = await open_vchan_stream(server_domid, port, backend=backend)
    async with stream:
        yield stream


@final
class VchanListener(trio.abc.Listener[VchanStream]):
    """Serves one client domain on one port, one connection per :meth:`accept`.

    Each ``accept()`` advertises a fresh endpoint and returns it once the client has connected,
    so ``trio.serve_listeners(handler, [VchanListener(d, port) for d in domids])`` serves many
    domains and clients that reconnect. A client that breaks the handshake, or takes the
    advertisement and does not complete within ``handshake_timeout`` seconds of binding its
    port (None: no limit), is dropped and the listener advertises afresh. The listener sees a
    bound port only when it looks (every half timeout, at most every 2.5 s), and only where
    the backend can tell (the simulated host; not Linux's ``/dev/xen/evtchn``).

    The constructor checks the arguments and claims the port (see :doc:`design`). It does no
    I/O, so it takes a domain id: for a domain name, ``VchanListener(await
    lookup_domain(name), port)``.

    Raises:
        ValueError, TypeError: a bad domid, port, size or timeout, or our own domain.
        BackendUnavailableError: no platform.
        OSError: ``EADDRINUSE``: another live server of this domain (in this process or
            another) serves this port. An advertisement left by one that died is taken over.
    """

    def __init__(
        self,
        client_domid: int,
        port: str | int,
        *,
        read_size: int = DEFAULT_RING_SIZE,
        write_size: int = DEFAULT_RING_SIZE,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        backend: Backend | None = None,
    ) -> None:
        self.client_domid: int = check_domid(client_domid, "client_domid")
        orders = choose_orders(read_size, write_size)
        vchan_path(0, client_domid, port)
        timeout = _check_timeout(handshake_timeout)
        self._session = Session.join(backend)
        try:
            _check_peer(self._session, client_domid, "client_domid")
            #: The vchan's XenStore directory.
            self.path: str = vchan_path(self._session.backend.domid, client_domid, port)
            self._server = ServerPort(
                self._session.backend,
                self._session.advertisements,
                client_domid,
                self.path,
                orders,
                timeout,
                self._session.defer,
            )
        except BaseException:
            self._session.leave_unused()
            raise
        self._accepting: trio.CancelScope | None = None
        self._accept_done = trio.Event()
        self._accept_done.set()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<VchanListener for domain {self.client_domid} at {self.path}, {state}>"

    async def accept(self) -> VchanStream:
        """Advertise, wait for the client, return the connected stream.

        Raises:
            trio.BusyResourceError: another task is accepting on this listener.
            trio.ClosedResourceError: the listener was closed, before or during the call.
            XenStoreError: XenStore refused the advertisement.
        """
        if self._accepting is not None:
            raise trio.BusyResourceError("another task is already accepting on this listener")
        if self._closed:
            raise trio.ClosedResourceError("this listener was already closed")
        self._accept_done = trio.Event()
        with trio.CancelScope() as self._accepting:
            try:
                endpoint = await self._server.accept()
            finally:
                self._accepting = None
                self._accept_done.set()
            self._session.add_user()  # the stream's, until it closes
            return _stream(self._session, endpoint)
        raise trio.ClosedResourceError("this listener was closed while accepting")

    async def aclose(self) -> None:
        """Stop listening; an accept in progress raises ClosedResourceError."""
        if not self._closed:
            self._closed = True
            if self._accepting is not None:
                self._accepting.cancel()
            try:
                with trio.CancelScope(shield=True):  # its cleanup is bounded
                    await self._accept_done.wait()
                await self._server.aclose()
            finally:
                with trio.CancelScope(shield=True):
                    await self._session.leave()
        await trio.lowlevel.checkpoint()


async def serve_vchan(
    handler: Callable[[VchanStream], Awaitable[Any]],
    client_domids: Iterable[Domain],
    port: str | int,
    *,
    read_size: int = DEFAULT_RING_SIZE,
    write_size: int = DEFAULT_RING_SIZE,
    backend: Backend | None = None,
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[VchanListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``port`` to every domain in ``client_domids`` forever, one task per connection.

    Usable with ``nursery.start``, which returns the listeners. A domain may be given by name
    (see :func:`lookup_domain`); names are looked up once, before listening.
    """
    domids = [await lookup_domain(d, backend=backend) for d in client_domids]
    listeners = [
        VchanListener(
            d,
            port,
            read_size=read_size,
            write_size=write_size,
            handshake_timeout=handshake_timeout,
            backend=backend,
        )
        for d in domids
    ]
    await trio.serve_listeners(
        handler, listeners, handler_nursery=handler_nursery, task_status=task_status
    )
