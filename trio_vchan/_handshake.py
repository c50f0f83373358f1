"""Setting up and tearing down a vchan: the server's side and the client's, in one place.

Written against the backend (event channels, grants) and :mod:`trio_vchan._advertisement`
(where endpoints are advertised); nothing here speaks XenStore.

Server (:class:`ServerPort`, one per listener): claim the port for this domain (see
:class:`_PortClaim`) and clear whatever a dead server left there. Then, per connection: bind an
unbound event channel for the client, grant and fill in the shared page (unmap-notify on
``srv_live``) and the external ring pages, publish them, wait for the client to move
``cli_live`` off 2, and withdraw the advertisement at once (so no second client can attach to
a connected endpoint, and nothing stays behind if the server dies later). A client that breaks
the handshake (a bad ``cli_live``, a port it closes before it is in, or no progress within
``handshake_timeout``) is dropped; its pages are kept and offered again, so that a client
domain that maps pages and never lets go cannot make us grant more and more of them, and the
next try waits a little longer (up to :data:`BROKEN_BACKOFF_MAX`). Running out of ports,
grants or memory while advertising is waited out the same way, never raised to
``serve_listeners``. Everything else (XenStore, the platform) is raised.

Client (:func:`connect_endpoint`): look the advertisement up (waiting on a watch), bind, map
the page (unmap-notify on ``cli_live``), copy and validate the orders and grant refs once, map
the rings, ask to be told of writes, set ``cli_live = 1`` and notify. An advertisement whose
port cannot be bound (another client of our domain took it, or its server died) is waited out
until the next one.

Every wait here is cancellable. Cleanup that must outlive a cancel (withdrawing an
advertisement whose publication may have landed, removing empty directories) is handed to
the session's chores, which run it for at most :data:`CLEANUP_TIME` in a task of their own,
so the cancel itself stays prompt; what could not be done is logged on the ``trio_vchan``
logger, never raised over the caller's own exception.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import re
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ._advertisement import Advertised, Advertisements
from ._backend import PAGE_SIZE, Backend, ChannelStatus, check_domid
from ._errors import ProtocolError
from ._layout import (
    CLI_LIVE,
    SRV_LIVE,
    Live,
    RingOrders,
    Role,
    in_page_ring,
    init_server_page,
    read_grants,
    read_orders,
)
from ._notify import Notifier
from ._ring import RingEndpoint
from ._xs_wire import validate_path

if TYPE_CHECKING:
    from ._backend import EventChannel, Mapping, Share

_PORT_NAME: Final = re.compile(r"[a-zA-Z0-9_-]+\Z")
_log = logging.getLogger("trio_vchan")

#: Default seconds a client has, once it has bound the advertised port, to set ``cli_live``.
DEFAULT_HANDSHAKE_TIMEOUT: Final = 5.0
#: Cleanup (withdrawing, unwatching) in normal operation waits at most this long.
CLEANUP_TIME: Final = 2.0
#: ... and once the caller was cancelled, this long (shielded), so cancels stay prompt.
CANCELLED_CLEANUP_TIME: Final = 0.05
#: Delays before advertising again after broken handshakes: doubling from the first.
BROKEN_BACKOFF_FIRST: Final = 0.01
BROKEN_BACKOFF_MAX: Final = 0.25
#: Delays after running out of ports, grants, fds or memory while advertising.
RESOURCE_BACKOFF_FIRST: Final = 0.1
RESOURCE_BACKOFF_MAX: Final = 2.0
_RESOURCE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def vchan_path(server_domid: int, client_domid: int, port: str | int) -> str:
    """The XenStore directory of a vchan.

    Args:
        port: a name matching ``[a-zA-Z0-9_-]+`` (as ocaml-vchan), a non-negative int (written in
            decimal, as Qubes does), or an absolute XenStore path used as it is (as libxenvchan).

    Raises:
        TypeError, ValueError: any other port.
    """
    check_domid(server_domid, "server_domid")
    check_domid(client_domid, "client_domid")
    if isinstance(port, bool) or not isinstance(port, (int, str)):
        raise TypeError(f"port must be a str or an int, not {type(port).__name__}")
    if isinstance(port, int):
        if port < 0:
            raise ValueError(f"an int port must be >= 0, not {port}")
        name = str(port)
    elif port.startswith("/"):
        try:
            validate_path(port)
        except ValueError as exc:
            raise ValueError(f"port {port!r} is not a valid XenStore path: {exc}") from None
        return port.rstrip("/")
    elif _PORT_NAME.match(port):
        name = port
    else:
        raise ValueError(
            f"port must match [a-zA-Z0-9_-]+, be an int, or be an absolute XenStore path,"
            f" not {port!r}"
        )
    return f"/local/domain/{server_domid}/data/vchan/{client_domid}/{name}"


@attrs.define
class Endpoint:
    """Everything one side of a vchan holds; ``release()`` gives it all back."""

    role: Role
    ring: RingEndpoint
    channel: EventChannel
    regions: list[Share | Mapping]  # released in reverse order
    path: str
    peer_domid: int

    def release(self) -> None:
        """Drop the ring's views, unshare or unmap every region, close the channel."""
        _release_all(
            [self.ring.release, *[r.close for r in reversed(self.regions)], self.channel.close]
        )


def _release_all(steps: list[Callable[[], None]]) -> None:
    """Run every step even if some fail; re-raise the first failure."""
    first: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as exc:  # release the rest first
            first = first or exc
    if first is not None:
        raise first


#: Hands cleanup to someone who outlives a cancelled caller; returns an event set once done.
Defer = Callable[[str, Callable[[], Awaitable[None]]], trio.Event]


async def cleanup(what: str, action: Callable[[], Awaitable[None]], defer: Defer | None) -> None:
    """Run ``action`` for at most :data:`CLEANUP_TIME` seconds; log what fails, never raise.

    Once the caller is cancelled, it is handed to ``defer`` (the session's chores, which run
    it shielded, in order, for as long), so that the cancel stays prompt; without ``defer``
    it runs shielded for at most :data:`CANCELLED_CLEANUP_TIME`. A Cancelled that arrives
    meanwhile is raised after the hand-over.
    """
    if trio.current_effective_deadline() != -math.inf:
        try:
            with trio.move_on_after(CLEANUP_TIME) as scope:
                await action()
        except trio.Cancelled:
            await _after_cancel(what, action, defer)
            raise
        except Exception as exc:
            _log.warning("could not %s: %s", what, exc)
        else:
            if scope.cancelled_caught:
                _log.warning("could not %s: no answer within %s s", what, CLEANUP_TIME)
        return
    await _after_cancel(what, action, defer)


async def _after_cancel(
    what: str, action: Callable[[], Awaitable[None]], defer: Defer | None
) -> None:
    if defer is not None:
        defer(what, action)
        return
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + CANCELLED_CLEANUP_TIME
        try:
            await action()
        except Exception as exc:
            _log.warning("could not %s: %s", what, exc)
    if scope.cancelled_caught:
        _log.warning("could not %s: cancelled, gave up after %s s", what, CANCELLED_CLEANUP_TIME)


# -- server ---------------------------------------------------------------------------------------


class _ClientFailed(Exception):
    """The client broke the handshake: drop it and advertise afresh."""


@attrs.define
class _Backoff:
    """A delay that doubles from ``first`` to ``cap`` with each strike; reset by success."""

    first: float
    cap: float
    delay: float = 0.0

    def strike(self) -> None:
        self.delay = min(self.cap, self.delay * 2 or self.first)

    def reset(self) -> None:
        self.delay = 0.0

    async def wait(self) -> None:
        if self.delay:
            await trio.sleep(self.delay)


class _PortClaim:
    """This process's hold on (domain, path): one server at a time per port.

    Held as an abstract Unix socket named for the platform instance, the domain and the path;
    the kernel frees it when the process exits, so a second live server of this domain fails
    at once while an advertisement left by a dead one is taken over. (Servers of other
    implementations do not take the claim.)
    """

    def __init__(self, backend: Backend, path: str) -> None:
        instance = backend.instance or f"process backend {id(backend.events)}"
        digest = hashlib.sha256(f"{instance}\0{backend.domid}\0{path}".encode()).hexdigest()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._socket.bind(f"\0trio-vchan/{digest[:40]}")
        except OSError as exc:
            self._socket.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            raise OSError(
                errno.EADDRINUSE,
                f"port in use: another server of domain {backend.domid} (in this or another"
                f" process) already serves {path}; close it first, or choose another port",
            ) from None

    def release(self) -> None:
        self._socket.close()


@attrs.define
class _Pages:
    """The granted pages of one advertisement, offered again after a failed handshake: the
    shared page and the external rings' pages, in that order, in one share (one grant call
    and one release instead of three)."""

    share: Share
    orders: RingOrders

    @classmethod
    def grant(cls, backend: Backend, client_domid: int, orders: RingOrders) -> _Pages:
        external = sum(1 << (order - 12) for order in (orders.left, orders.right) if order >= 12)
        return cls(backend.memory.share(client_domid, 1 + external), orders)

    def ring(self, channel: EventChannel) -> RingEndpoint:
        """Reset the page for a fresh client of ``channel`` and return our end of it."""
        self.share.set_unmap_notify(SRV_LIVE, channel.port)
        pages = self.share.buffer
        page = pages[:PAGE_SIZE]
        init_server_page(page, self.orders, self.share.refs[1:])
        views: list[memoryview] = []
        start = PAGE_SIZE  # the external rings' pages follow the shared page
        for order in (self.orders.left, self.orders.right):
            if order < 12:
                views.append(in_page_ring(page, order))
            else:
                views.append(pages[start : start + (1 << order)])
                start += 1 << order
        return RingEndpoint(page, read_ring=views[0], write_ring=views[1], role=Role.SERVER)

    def release(self) -> None:
        self.share.close()


class ServerPort:
    """The server's side of one (client domain, path): one handshake per :meth:`accept`.

    Raises:
        OSError: ``EADDRINUSE`` if another server of this domain holds the port.
    """

    def __init__(
        self,
        backend: Backend,
        advertisements: Advertisements,
        client_domid: int,
        path: str,
        orders: RingOrders,
        handshake_timeout: float | None,
        defer: Defer | None = None,
    ) -> None:
        self._backend = backend
        self._defer = defer
        self._pending: trio.Event | None = None  # a withdrawal handed over, not yet done
        self._advertisements = advertisements
        self._client_domid = client_domid
        self._path = path
        self._orders = orders
        self._handshake_timeout = handshake_timeout
        self._claim: _PortClaim | None = _PortClaim(backend, path)
        self._stale_cleared = False
        self._pages: _Pages | None = None
        self._broken = _Backoff(BROKEN_BACKOFF_FIRST, BROKEN_BACKOFF_MAX)
        self._starved = _Backoff(RESOURCE_BACKOFF_FIRST, RESOURCE_BACKOFF_MAX)

    async def accept(self) -> Endpoint:
        """Advertise, wait for the client, withdraw; return the connected endpoint."""
        if self._claim is None:
            raise trio.ClosedResourceError("this server port was closed")
        if not self._stale_cleared:
            # Anything there now was left by a server that died: take it over.
            await self._advertisements.withdraw(self._path)
            self._stale_cleared = True
        while True:
            await self._broken.wait()
            await self._starved.wait()
            try:
                endpoint = await self._advertise_once()
            except _ClientFailed as exc:
                _log.info("%s: %s; advertising afresh", self._path, exc)
                self._broken.strike()
                continue
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                _log.warning("%s: %s; trying again in %.1f s", self._path, exc, self._starved.delay)
                self._starved.strike()
                continue
            self._broken.reset()
            self._starved.reset()
            return endpoint

    async def _advertise_once(self) -> Endpoint:
        if self._pending is not None:  # it removes what is at our path: let it finish first
            await self._pending.wait()
            self._pending = None
        if self._pages is None:
            self._pages = _Pages.grant(self._backend, self._client_domid, self._orders)
        pages = self._pages
        channel = self._backend.events.bind_unbound(self._client_domid)
        try:
            ring = pages.ring(channel)
        except BaseException:
            channel.close()
            raise
        try:
            advertised = Advertised(pages.share.refs[0], channel.port)
            try:
                await self._advertisements.publish(self._path, self._client_domid, advertised)
                await self._wait_for_client(ring, channel)
            finally:  # connected or not, nobody else may take it now
                await cleanup(
                    f"withdraw the advertisement at {self._path}",
                    lambda: self._advertisements.withdraw(self._path),
                    self._hand_over if self._defer is not None else None,
                )
        except BaseException:
            _release_all([ring.release, channel.close])  # the pages stay, for the next try
            raise
        self._pages = None  # the stream owns them now
        return Endpoint(Role.SERVER, ring, channel, [pages.share], self._path, self._client_domid)

    def _hand_over(self, what: str, action: Callable[[], Awaitable[None]]) -> trio.Event:
        """Defer cleanup; our next advertisement waits for it (it clears our path)."""
        assert self._defer is not None
        self._pending = self._defer(what, action)
        return self._pending

    async def _wait_for_client(self, ring: RingEndpoint, channel: EventChannel) -> None:
        """Return once the client has set ``cli_live``.

        Raises:
            _ClientFailed: it wrote a bad live byte, closed its port first, or stalled for
                ``handshake_timeout`` seconds after binding the port.
        """
        timeout = self._handshake_timeout
        # Where the backend can tell a bound port (one platform request), look again this
        # often to start the clock: a stalled client is dropped within 1.5 timeouts.
        look = math.inf if timeout is None else max(0.01, min(timeout / 2, 2.5))
        bound_at: float | None = None
        notifier = Notifier(channel)
        try:
            while True:
                token = notifier.token()  # before looking: an event after the look wakes the wait
                try:
                    live = ring.peer_live()
                except ProtocolError as exc:
                    raise _ClientFailed(f"the client broke the handshake: {exc}") from exc
                if live is not Live.WAITING:
                    return
                status = channel.status()
                if status is ChannelStatus.PEER_CLOSED:
                    raise _ClientFailed("the client closed its port before setting cli_live")
                now = trio.current_time()
                if status is ChannelStatus.CONNECTED and bound_at is None:
                    bound_at = now
                wait = look if bound_at is None or timeout is None else bound_at + timeout - now
                if wait <= 0:
                    raise _ClientFailed(f"the client did not complete the handshake in {timeout} s")
                with trio.move_on_after(wait if status is not ChannelStatus.UNKNOWN else math.inf):
                    await notifier.wait(token)
        finally:
            notifier.close()

    async def aclose(self) -> None:
        """Give back the pages and the claim; remove the empty parents of the path."""
        pages, self._pages = self._pages, None
        claim, self._claim = self._claim, None
        try:
            if pages is not None:
                pages.release()
        finally:
            if claim is not None:
                claim.release()
                pending, self._pending = self._pending, None  # (a hand-over below resets it)

                async def tidy() -> None:
                    if pending is not None:  # a withdrawal handed over: our node goes first
                        await pending.wait()
                    await self._advertisements.tidy(self._path)

                await cleanup(
                    f"remove the empty directories above {self._path}",
                    tidy,
                    self._hand_over if self._defer is not None else None,
                )


# -- client ---------------------------------------------------------------------------------------


async def connect_endpoint(
    backend: Backend, advertisements: Advertisements, server_domid: int, path: str
) -> Endpoint:
    """Connect as the client to the server advertised at ``path``, waiting for it.

    Raises:
        ProtocolError: the advertisement or the shared page is invalid.
        PeerGoneError: the server's domain was destroyed while we waited.
        OSError: the platform refused (for instance the pages are not granted to us).
    """
    async with advertisements.lookup(server_domid, path) as lookup:
        while True:
            advertised = await lookup.next()
            try:
                endpoint = _attach_to(backend, server_domid, path, advertised)
            except FileNotFoundError:
                # No such grant: if the advertisement has changed since, ours was stale (the
                # listener's next one reused its port number, so the bind went through); if
                # not, this advertisement names a page that is not there.
                if await lookup.current() != advertised:
                    continue
                raise
            if endpoint is not None:
                return endpoint


def _check_grants(grants: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    """Refuse grant ref 0 (the toolstack's, never a vchan's): backends may refuse it as an
    argument rather than as a missing grant (the simulated host raises ValueError)."""
    for name, refs in zip(("left", "right"), grants, strict=True):
        if 0 in refs:
            raise ProtocolError(f"the shared page lists grant ref 0 for the {name} ring")
    return grants


def _attach_to(
    backend: Backend, server_domid: int, path: str, advertised: Advertised
) -> Endpoint | None:
    """Bind, map, validate and announce, for one advertisement.

    Returns None if the advertised port cannot be bound (EINVAL: another client took it, or
    its server is gone), so that the caller waits for a fresh advertisement. Any later
    failure, an EINVAL from mapping included, is raised: it is this advertisement's fault.
    """
    try:
        channel = backend.events.bind_interdomain(server_domid, advertised.port)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise
    cleanup: list[Callable[[], None]] = [channel.close]
    try:
        page_map = backend.memory.map(server_domid, [advertised.ring_ref], writable=True)
        cleanup.insert(0, page_map.close)
        page_map.set_unmap_notify(CLI_LIVE, channel.port)
        regions: list[Share | Mapping] = [page_map]
        page = page_map.buffer
        orders = read_orders(page)  # copied once, validated
        grants = _check_grants(read_grants(page, orders))
        rings: list[memoryview] = []
        for order, refs, writable in zip(
            (orders.left, orders.right), grants, (True, False), strict=True
        ):
            if order < 12:
                view = in_page_ring(page, order)
            else:
                mapping = backend.memory.map(server_domid, refs, writable=writable)
                cleanup.insert(0, mapping.close)
                regions.append(mapping)
                view = mapping.buffer[: 1 << order]
            # Should mapping the next ring fail, this view must go before its pages can.
            cleanup.insert(0, view.release)
            rings.append(view)
        ring = RingEndpoint(page[:], read_ring=rings[1], write_ring=rings[0], role=Role.CLIENT)
        cleanup.insert(0, ring.release)
        ring.request_data_notify()  # as libxenvchan's srv_notify = VCHAN_NOTIFY_WRITE
        ring.set_live(Live.CONNECTED)
        channel.notify()
    except BaseException:
        _release_all(cleanup)
        raise
    return Endpoint(Role.CLIENT, ring, channel, regions, path, server_domid)


# -- both sides in one process -------------------------------------------------------------------


def connect_directly(
    server: Backend, client: Backend, orders: RingOrders, path: str
) -> tuple[Endpoint, Endpoint]:
    """Set up both ends of a vchan whose two domains are backends of this process: the
    server's pages and port, handed straight to the client's attach (nothing is advertised,
    so nothing waits). Returns (server's endpoint, client's endpoint).

    Raises:
        OSError: the platform refused.
    """
    pages = _Pages.grant(server, client.domid, orders)
    cleanup: list[Callable[[], None]] = [pages.release]
    try:
        channel = server.events.bind_unbound(client.domid)
        cleanup.insert(0, channel.close)
        ring = pages.ring(channel)
        cleanup.insert(0, ring.release)
        advertised = Advertised(pages.share.refs[0], channel.port)
        client_end = _attach_to(client, server.domid, path, advertised)
    except BaseException:
        _release_all(cleanup)
        raise
    if client_end is None:  # a fresh port of its own: only a broken platform refuses it
        _release_all(cleanup)
        raise OSError(errno.EINVAL, f"domain {client.domid} could not bind port {channel.port}")
    server_end = Endpoint(Role.SERVER, ring, channel, [pages.share], path, client.domid)
    return server_end, client_end
