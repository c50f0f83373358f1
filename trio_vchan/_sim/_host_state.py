"""The simulated host's event-channel and grant state, and the answers to platform requests.

Theory of operation
-------------------
All state lives in :class:`PlatformState`, which is synchronous: a request is handled start
to finish without awaiting, so no locks are needed between trio tasks (a lock still guards it
against the threads that serve the host's own process and against in-process backends used
from worker threads). Grant pages are sealed memfds; event channel ends are eventfds. The
host keeps its own copy of every fd it hands out, so it can clear unmap-notify bytes (with
``pwrite``) and fire ports (with ``eventfd_write``) after the client that held them is gone.

A connection's resources are released when it closes: its shares and mappings first
(performing their unmap-notifies, which may fire ports), then its ports. That is Linux's
order too: gntalloc/gntdev hold a reference on the notify port.

A backend in the state's own process reaches it through :class:`LocalTransport` (direct calls
in place of a socket): the host's in-process backends, and the platform of a
``vchan_stream_pair``, which has no host at all.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import heapq
import logging
import os
import threading
from typing import Final, final

import attrs

from .._backend import PAGE_SIZE, check_domid
from ._fds import close_quietly
from ._proto import (
    MAP_WRITABLE,
    MAX_PAGES,
    NO_NOTIFY,
    VERSION,
    Op,
    PortState,
    Reply,
    Request,
    ok,
)

log = logging.getLogger(__name__)

#: Xen keeps grant refs 0..7 for the toolstack; gntalloc hands out refs above them.
FIRST_REF: Final = 8
MAX_REFS_PER_DOMAIN: Final = 32768  # Xen's default: 64 grant frames of 512 v1 entries
#: Ports a domain may have open unless the host is told otherwise: the 2-level event-channel
#: ABI's limit on 64-bit (xl's ``max_event_channels`` defaults lower, to 1023 and more per vCPU).
EVENT_CHANNELS_DEFAULT: Final = 4096
#: The most a host may allow: the FIFO event-channel ABI's limit (2**17 ports).
EVENT_CHANNELS_MAX: Final = 1 << 17
MAX_HANDLES_PER_CONNECTION: Final = 16384
_OP_NAMES: Final = {op.value: op.name for op in Op}


class _RequestError(Exception):
    """A request fails with ``errno`` and a message for the client."""

    def __init__(self, errno_value: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_value
        self.message = message


@attrs.define(eq=False)
class PlatformConnection:
    """One platform connection: what a process opened as domain ``domid``."""

    domid: int
    handles: dict[int, _Share | _Map] = attrs.field(factory=dict)
    ports: dict[int, _Port] = attrs.field(factory=dict)
    next_handle: int = 1
    closed: bool = False


@attrs.define(eq=False)
class _Port:
    domid: int
    number: int
    remote_domid: int
    wait_fd: int  # the host's copy of this end's eventfd (the peer's notify fires it)
    #: While unbound: the eventfd the end that binds to it will wait on (it then becomes that
    #: port's ``wait_fd``: the host keeps one fd per eventfd, whoever holds it open).
    spare_fd: int | None
    owner: PlatformConnection
    state: PortState = PortState.UNBOUND
    peer: _Port | None = None
    closed: bool = False
    #: Unmap-notifies that will fire this port: while there are any, closing it (or its
    #: connection) only unbinds it from its owner, as Linux's gntalloc and gntdev hold a
    #: reference on the port; it closes when the last of them has run or gone.
    holds: int = 0
    unbound: bool = False  # its owner closed it, its notifies still hold it


@attrs.define(eq=False)
class _Memory:
    """A sealed memfd: the pages of one GNT_SHARE."""

    fd: int
    pages: int
    users: int = 0


@attrs.define(eq=False)
class _Grant:
    domid: int
    ref: int
    grantee: int
    memory: _Memory
    page: int
    table: _Domain  # the granting domain, even after it was destroyed
    maps: int = 0
    revoked: bool = False


@attrs.define(eq=False)
class _Notify:
    file_offset: int | None  # the byte to clear (None: none)
    port: _Port | None  # the port to fire (None: none)


@attrs.define(eq=False)
class _Share:
    grants: list[_Grant]
    memory: _Memory
    notify: _Notify | None = None

    @property
    def length(self) -> int:
        return len(self.grants) * PAGE_SIZE

    @property
    def file_offset(self) -> int:
        return 0


@attrs.define(eq=False)
class _Map:
    grants: list[_Grant]
    memory: _Memory
    file_offset: int
    writable: bool
    notify: _Notify | None = None

    @property
    def length(self) -> int:
        return len(self.grants) * PAGE_SIZE


@attrs.define
class _Numbers:
    """Numbers handed out lowest free first, as Xen hands out ports and grant refs."""

    next: int  # the lowest never handed out
    free: list[int] = attrs.field(factory=list)  # a heap of those given back

    def take(self) -> int:
        if self.free:
            return heapq.heappop(self.free)
        self.next += 1
        return self.next - 1

    def give_back(self, number: int) -> None:
        heapq.heappush(self.free, number)


@attrs.define(eq=False)
class _Domain:
    domid: int
    ports: dict[int, _Port] = attrs.field(factory=dict)
    port_numbers: _Numbers = attrs.field(factory=lambda: _Numbers(1))  # port 0 is never bound
    grants: dict[int, _Grant] = attrs.field(factory=dict)
    refs: _Numbers = attrs.field(factory=lambda: _Numbers(FIRST_REF))
    destroyed: bool = False


@attrs.frozen
class Result:
    reply: Reply
    fds: list[int] = attrs.field(factory=list)  # to send; the host keeps them open...
    temporary: list[int] = attrs.field(factory=list)  # ...except these, closed once sent


def _fire(fd: int) -> None:
    with contextlib.suppress(OSError):  # a saturated counter: an event is pending anyway
        os.eventfd_write(fd, 1)


@final
class PlatformState:
    """The host's event-channel and grant state, and the request handlers. Synchronous."""

    def __init__(self, max_event_channels: int = EVENT_CHANNELS_DEFAULT) -> None:
        """``max_event_channels``: the ports each domain may have open at once (1 to
        :data:`EVENT_CHANNELS_MAX`), as xl's ``max_event_channels``."""
        if not 1 <= max_event_channels <= EVENT_CHANNELS_MAX:
            raise ValueError(
                f"a domain's event channels must be 1 to {EVENT_CHANNELS_MAX} (the FIFO ABI's"
                f" limit), not {max_event_channels}"
            )
        self.max_event_channels = max_event_channels
        self.domains: dict[int, _Domain] = {}
        #: Destroyed domains whose grants other domains still map (Xen's zombie domains).
        self.dying: list[_Domain] = []
        self.connections: set[PlatformConnection] = set()
        self.lock = threading.RLock()
        #: Requests received, by (domid, operation name), as the XenStore counts its own.
        self.requests: collections.Counter[tuple[int, str]] = collections.Counter()

    # -- lifetime ---------------------------------------------------------------------------------

    def add_domain(self, domid: int) -> None:
        self.domains.setdefault(domid, _Domain(domid))

    def connect(self, domid: int) -> PlatformConnection:
        with self.lock:
            conn = PlatformConnection(domid)
            if domid in self.domains:
                self.connections.add(conn)
            else:  # accepted just before the domain was destroyed: every request gets EPIPE
                conn.closed = True
            return conn

    def disconnect(self, conn: PlatformConnection) -> None:
        """Release everything ``conn`` holds: shares and maps (with notifies), then ports."""
        with self.lock:
            if not conn.closed:
                self._release_connections([conn])

    def destroy_domain(self, domid: int) -> None:
        """Close every connection of ``domid`` as if its processes died, then forget it.

        Its grants that other domains still map stay (revoked) until they are unmapped.
        """
        with self.lock:
            domain = self.domains[domid]
            self._release_connections([c for c in self.connections if c.domid == domid])
            assert not domain.ports, "every port belongs to a connection of its domain"
            del self.domains[domid]
            domain.destroyed = True
            if domain.grants:
                self.dying.append(domain)

    def _release_connections(self, conns: list[PlatformConnection]) -> None:
        """Close ``conns``: all their shares and maps first (performing the unmap-notifies,
        whose ports may belong to any of them), then all their ports."""
        for conn in conns:
            conn.closed = True
            self.connections.discard(conn)
        for conn in conns:
            for handle in list(conn.handles):
                self._release(conn, handle)
        for conn in conns:
            for port in list(conn.ports.values()):
                self._close_port(port)

    def close(self) -> None:
        """Disconnect everyone (the host is stopping)."""
        with self.lock:
            for conn in list(self.connections):
                self.disconnect(conn)

    def leaks(self) -> list[str]:
        with self.lock:
            found: list[str] = []
            for domain in [*self.domains.values(), *self.dying]:
                for port in domain.ports.values():
                    peer = f" to port {port.peer.number}" if port.peer else ""
                    found.append(
                        f"domain {domain.domid} port {port.number} ({port.state.name.lower()}, "
                        f"for domain {port.remote_domid}{peer})"
                    )
                for grant in domain.grants.values():
                    how = "revoked but mapped" if grant.revoked else "granted"
                    whose = "destroyed domain" if domain.destroyed else "domain"
                    found.append(
                        f"{whose} {domain.domid} grant ref {grant.ref} ({how}, to domain "
                        f"{grant.grantee}, mapped {grant.maps} times)"
                    )
            for conn in self.connections:
                for handle, held in conn.handles.items():
                    if isinstance(held, _Map):
                        refs = [g.ref for g in held.grants]
                        found.append(
                            f"domain {conn.domid} mapping {handle} of domain "
                            f"{held.grants[0].domid}'s refs {refs}"
                        )
            return found

    # -- requests ---------------------------------------------------------------------------------

    def handle(self, conn: PlatformConnection, data: bytes) -> Result:
        """Answer one request from ``conn``; never raises for anything the client sent."""
        with self.lock:
            try:
                request = Request.decode(data)
            except ValueError as exc:
                return Result(Reply(errno.EINVAL, message=f"malformed request: {exc}"))
            self.requests[conn.domid, _OP_NAMES.get(request.op) or str(request.op)] += 1
            if conn.closed:
                return Result(Reply(errno.EPIPE, message="this connection was closed"))
            try:
                return self._dispatch(conn, request)
            except _RequestError as exc:
                return Result(Reply(exc.errno, message=exc.message))

    def _dispatch(self, conn: PlatformConnection, request: Request) -> Result:
        a0, a1, a2 = request.args
        op = request.op
        if op != Op.GNT_MAP and request.words:
            raise _RequestError(errno.EINVAL, f"request {op} takes no words after the header")
        if op == Op.HELLO:
            return Result(ok((VERSION, conn.domid, PAGE_SIZE)))
        if op == Op.EVTCHN_BIND_UNBOUND:
            return self._bind_unbound(conn, _domid(a0))
        if op == Op.EVTCHN_BIND_INTERDOMAIN:
            return self._bind_interdomain(conn, _domid(a0), a1)
        if op == Op.EVTCHN_CLOSE:
            self._close_port(self._own_port(conn, a0))
            return Result(ok())
        if op == Op.EVTCHN_STATUS:
            port = self._own_port(conn, a0)
            remote = port.peer.number if port.peer else 0
            return Result(ok((port.state, port.remote_domid, remote)))
        if op == Op.GNT_SHARE:
            return self._share(conn, _domid(a0), a1)
        if op == Op.GNT_MAP:
            if a1 & ~MAP_WRITABLE:
                raise _RequestError(errno.EINVAL, f"unknown map flags {a1:#x}")
            return self._map(conn, _domid(a0), request.words, writable=bool(a1 & MAP_WRITABLE))
        if op == Op.GNT_SET_UNMAP_NOTIFY:
            return self._set_unmap_notify(conn, a0, a1, a2)
        if op == Op.GNT_RELEASE:
            if a0 not in conn.handles:
                raise _RequestError(errno.EBADF, f"no share or mapping with handle {a0}")
            self._release(conn, a0)
            return Result(ok())
        if op in (Op.INTRODUCE_DOMAIN, Op.DESTROY_DOMAIN):
            raise _RequestError(errno.EPERM, f"{Op(op).name} is for the host socket only")
        raise _RequestError(errno.ENOSYS, f"unknown request {op}")

    # -- event channels ---------------------------------------------------------------------------

    def _new_port(
        self, conn: PlatformConnection, remote_domid: int, wait_fd: int, spare_fd: int | None
    ) -> _Port:
        domain = self.domains[conn.domid]
        number = domain.port_numbers.take()
        port = _Port(conn.domid, number, remote_domid, wait_fd, spare_fd, conn)
        domain.ports[number] = port
        conn.ports[number] = port
        return port

    def _check_port_space(self, conn: PlatformConnection) -> None:
        if len(self.domains[conn.domid].ports) >= self.max_event_channels:
            raise _RequestError(
                errno.ENOSPC,
                f"domain {conn.domid} has all its {self.max_event_channels} event channels open",
            )

    def _bind_unbound(self, conn: PlatformConnection, remote_domid: int) -> Result:
        self._check_port_space(conn)
        mine = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            theirs = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            os.close(mine)
            raise
        port = self._new_port(conn, remote_domid, mine, theirs)
        return Result(ok((port.number,)), [mine, theirs])

    def _bind_interdomain(self, conn: PlatformConnection, remote_domid: int, number: int) -> Result:
        remote = self._domain(remote_domid)
        target = remote.ports.get(number)
        if target is None:
            raise _RequestError(errno.EINVAL, f"domain {remote_domid} has no port {number}")
        if target.state is not PortState.UNBOUND or target.remote_domid != conn.domid:
            raise _RequestError(
                errno.EINVAL,
                f"port {number} of domain {remote_domid} is not unbound for domain {conn.domid}",
            )
        self._check_port_space(conn)
        wait_fd = target.spare_fd
        assert wait_fd is not None  # an unbound port holds it until now
        # Notifies sent before anyone was bound here are dropped, as Xen drops them.
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(wait_fd)
        port = self._new_port(conn, remote_domid, wait_fd, None)
        target.spare_fd = None  # port owns it now
        port.peer, target.peer = target, port
        port.state = target.state = PortState.CONNECTED
        return Result(ok((port.number,)), [wait_fd, target.wait_fd])

    def _own_port(self, conn: PlatformConnection, number: int) -> _Port:
        port = conn.ports.get(number)
        if port is None:
            raise _RequestError(errno.EBADF, f"port {number} is not bound on this connection")
        return port

    def _close_port(self, port: _Port) -> None:
        if port.closed or port.unbound:
            return
        del port.owner.ports[port.number]
        if port.holds:
            port.unbound = True  # closed by _drop_hold once its notifies have run
            return
        self._finish_close(port)

    def _drop_hold(self, port: _Port) -> None:
        port.holds -= 1
        if port.unbound and not port.holds:
            self._finish_close(port)

    def _finish_close(self, port: _Port) -> None:
        port.closed = True
        domain = self.domains[port.domid]
        del domain.ports[port.number]
        domain.port_numbers.give_back(port.number)
        peer = port.peer
        if peer is not None and not peer.closed:
            peer.state = PortState.PEER_CLOSED
            _fire(peer.wait_fd)
        port.peer = None
        if peer is not None:
            peer.peer = None
        close_quietly([port.wait_fd] if port.spare_fd is None else [port.wait_fd, port.spare_fd])

    # -- grants -----------------------------------------------------------------------------------

    def _domain(self, domid: int) -> _Domain:
        domain = self.domains.get(domid)
        if domain is None:
            raise _RequestError(errno.ESRCH, f"there is no domain {domid} on this host")
        return domain

    def _add_handle(self, conn: PlatformConnection, held: _Share | _Map) -> int:
        if len(conn.handles) >= MAX_HANDLES_PER_CONNECTION:
            raise _RequestError(errno.EMFILE, "too many shares and mappings on one connection")
        handle = conn.next_handle
        conn.next_handle = conn.next_handle % 0xFFFFFFFF + 1
        while handle in conn.handles:  # only after 2**32 handles
            handle = handle % 0xFFFFFFFF + 1
        conn.handles[handle] = held
        held.memory.users += 1
        return handle

    def _share(self, conn: PlatformConnection, remote_domid: int, count: int) -> Result:
        if not 1 <= count <= MAX_PAGES:
            raise _RequestError(errno.EINVAL, f"share 1..{MAX_PAGES} pages, not {count}")
        if len(conn.handles) >= MAX_HANDLES_PER_CONNECTION:
            raise _RequestError(errno.EMFILE, "too many shares and mappings on one connection")
        domain = self.domains[conn.domid]
        if len(domain.grants) + count > MAX_REFS_PER_DOMAIN:
            raise _RequestError(errno.ENOSPC, f"domain {conn.domid}'s grant table is full")
        fd = os.memfd_create("trio-vchan-grant", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, count * PAGE_SIZE)
            # Nobody may resize the pages: a shrunk memfd would SIGBUS every mapper.
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            )
        except BaseException:
            os.close(fd)
            raise
        memory = _Memory(fd, count)
        grants = []
        for page in range(count):
            ref = domain.refs.take()
            grant = _Grant(conn.domid, ref, remote_domid, memory, page, domain)
            domain.grants[ref] = grant
            grants.append(grant)
        handle = self._add_handle(conn, _Share(grants, memory))
        return Result(ok((handle, count), [g.ref for g in grants]), [fd])

    def _map(
        self, conn: PlatformConnection, remote_domid: int, refs: tuple[int, ...], *, writable: bool
    ) -> Result:
        if not 1 <= len(refs) <= MAX_PAGES:
            raise _RequestError(errno.EINVAL, f"map 1..{MAX_PAGES} refs, not {len(refs)}")
        remote = self._domain(remote_domid)
        grants = []
        for ref in refs:
            grant = remote.grants.get(ref)
            if grant is None or grant.revoked:
                raise _RequestError(errno.ENOENT, f"domain {remote_domid} has no grant ref {ref}")
            if grant.grantee != conn.domid:
                raise _RequestError(
                    errno.EACCES,
                    f"grant ref {ref} of domain {remote_domid} was granted to domain "
                    f"{grant.grantee}, not to domain {conn.domid}: a third domain is refused",
                )
            grants.append(grant)
        first = grants[0]
        if any(
            g.memory is not first.memory or g.page != first.page + i for i, g in enumerate(grants)
        ):
            raise _RequestError(
                errno.EINVAL,
                f"refs {list(refs)} are not consecutive pages of one share: the simulated host "
                "maps several refs together only if one GNT_SHARE granted them, in that order",
            )
        offset = first.page * PAGE_SIZE
        held = _Map(grants, first.memory, offset, writable)
        handle = self._add_handle(conn, held)
        for grant in grants:
            grant.maps += 1
        if writable:
            return Result(ok((handle, offset, held.length)), [first.memory.fd])
        # A read-only open of the memfd, so that the mapper cannot map it writable.
        fd = os.open(f"/proc/self/fd/{first.memory.fd}", os.O_RDONLY | os.O_CLOEXEC)
        return Result(ok((handle, offset, held.length)), [fd], [fd])

    def _set_unmap_notify(
        self, conn: PlatformConnection, handle: int, offset: int, number: int
    ) -> Result:
        held = conn.handles.get(handle)
        if held is None:
            raise _RequestError(errno.EBADF, f"no share or mapping with handle {handle}")
        if offset != NO_NOTIFY and offset >= held.length:
            raise _RequestError(
                errno.EINVAL, f"offset {offset} is outside the {held.length}-byte region"
            )
        if isinstance(held, _Map) and not held.writable and offset != NO_NOTIFY:
            raise _RequestError(errno.EINVAL, "clearing a byte needs a writable mapping")
        port = None
        if number != NO_NOTIFY:
            port = self.domains[conn.domid].ports.get(number)
            if port is None or port.unbound:
                raise _RequestError(
                    errno.EINVAL, f"port {number} is not bound in domain {conn.domid}"
                )
        if held.notify is not None and held.notify.port is not None:
            self._drop_hold(held.notify.port)
        held.notify = None
        if offset != NO_NOTIFY or port is not None:
            byte = None if offset == NO_NOTIFY else held.file_offset + offset
            held.notify = _Notify(byte, port)
            if port is not None:
                port.holds += 1
        return Result(ok())

    def _release(self, conn: PlatformConnection, handle: int) -> None:
        held = conn.handles.pop(handle)
        notify = held.notify
        if notify is not None:
            if notify.file_offset is not None:  # UNMAP_NOTIFY_CLEAR_BYTE
                try:
                    os.pwrite(held.memory.fd, b"\0", notify.file_offset)
                except OSError:
                    log.exception("cannot clear an unmap-notify byte")
            port = notify.port
            if port is not None:  # UNMAP_NOTIFY_SEND_EVENT
                if port.peer is not None and not port.peer.closed:
                    _fire(port.peer.wait_fd)
                self._drop_hold(port)
        domain = held.grants[0].table
        for grant in held.grants:
            if isinstance(held, _Map):
                grant.maps -= 1
            else:
                grant.revoked = True
            if grant.revoked and grant.maps == 0:
                del domain.grants[grant.ref]
                domain.refs.give_back(grant.ref)
        if domain.destroyed and not domain.grants:
            self.dying.remove(domain)
        held.memory.users -= 1
        if held.memory.users == 0:
            close_quietly([held.memory.fd])


def _domid(value: int) -> int:
    try:
        return check_domid(value)
    except ValueError as exc:
        raise _RequestError(errno.EINVAL, str(exc)) from None


@final
class LocalTransport:
    """A platform connection for a backend in the platform's own process: direct calls to
    :meth:`PlatformState.handle`, with the fds and the reply as a socket would pass them."""

    def __init__(self, platform: PlatformState, conn: PlatformConnection) -> None:
        self._platform = platform
        self._conn = conn

    def request(self, request: Request) -> tuple[Reply, list[int]]:
        result = self._platform.handle(self._conn, request.encode())
        fds: list[int] = []
        try:
            for fd in result.fds:
                fds.append(os.dup(fd))
        except BaseException:
            close_quietly(fds)
            raise
        finally:
            close_quietly(result.temporary)
        # Round-trip the reply through its wire form, as a socket would.
        return Reply.decode(result.reply.encode()), fds

    def post(self, request: Request) -> None:
        close_quietly(self.request(request)[1])  # at once: no reply to wait for in-process

    def close(self) -> None:
        self._platform.disconnect(self._conn)
