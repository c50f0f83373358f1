"""The simulated Xen host: event channels, grant tables and XenStore for local processes.

Theory of operation
-------------------
A host is a private directory of Unix sockets served by one trio task tree:

- ``host``: the control socket (only HELLO, INTRODUCE_DOMAIN and DESTROY_DOMAIN);
- ``domains/<N>/platform``: event channels and grants; a connection here *is* domain N;
- ``domains/<N>/xenstore``: the XenStore wire protocol, served by :mod:`._xenstored`.

All state lives in :class:`_Platform`, which is synchronous: a request is handled start to
finish without awaiting, so no locks are needed between trio tasks (a lock still guards it
against in-process backends used from worker threads). Grant pages are sealed memfds; event
channel ends are eventfds. The host keeps its own copy of every fd it hands out, so it can
clear unmap-notify bytes (with ``pwrite``) and fire ports (with ``eventfd_write``) after the
client that held them is gone.

A connection's resources are released when it closes: its shares and mappings first
(performing their unmap-notifies, which may fire ports), then its ports. That is Linux's
order too: gntalloc/gntdev hold a reference on the notify port.

Each domain's sockets are served by one task (``_serve_domain``) whose cancel scope covers its
accept loops and every connection they accepted, so destroying the domain ends them all. The
platform and XenStore state of the domain is released synchronously first, so nothing a
cancelled task could still do (it only ever reaches a closed connection) can be seen.
"""

from __future__ import annotations

import array
import collections
import contextlib
import errno
import fcntl
import heapq
import logging
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

import attrs
import trio

from .._backend import PAGE_SIZE, Backend, check_domid
from ._platform import ENV_DIR, ENV_DOMID, domain_dir, hello, make_backend, register_local
from ._proto import (
    FDS_MAX,
    MAP_WRITABLE,
    MAX_PAGES,
    MESSAGE_MAX,
    VERSION,
    Op,
    PortState,
    Reply,
    Request,
    ok,
)

if TYPE_CHECKING:
    from types import TracebackType

    from ._xenstored import XenStoreServer

log = logging.getLogger(__name__)

#: Xen keeps grant refs 0..7 for the toolstack; gntalloc hands out refs above them.
FIRST_REF: Final = 8
MAX_REFS_PER_DOMAIN: Final = 32768  # Xen's default: 64 grant frames of 512 v1 entries
MAX_PORTS_PER_DOMAIN: Final = 4096  # the 2-level event-channel ABI's limit on 64-bit
MAX_HANDLES_PER_CONNECTION: Final = 16384
_SOCKET_PATH_MAX: Final = 107  # sizeof(sun_path) - 1


class _RequestError(Exception):
    """A request fails with ``errno`` and a message for the client."""

    def __init__(self, errno_value: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_value
        self.message = message


@attrs.define(eq=False)
class _Connection:
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
    wait_fd: int  # the host's copy of this end's eventfd
    notify_fd: int  # the host's copy of the other end's eventfd
    owner: _Connection
    state: PortState = PortState.UNBOUND
    peer: _Port | None = None
    closed: bool = False


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
    file_offset: int
    port: _Port


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


@attrs.define(eq=False)
class _Domain:
    domid: int
    ports: dict[int, _Port] = attrs.field(factory=dict)
    grants: dict[int, _Grant] = attrs.field(factory=dict)
    free_refs: list[int] = attrs.field(factory=list)  # a heap of released refs
    next_ref: int = FIRST_REF
    destroyed: bool = False


@attrs.define(eq=False)
class _ServedDomain:
    """A domain's two listening sockets and the cancel scope of the tasks serving them."""

    domid: int
    xenstore: trio.socket.SocketType
    platform: trio.socket.SocketType
    cancel_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)


@attrs.frozen
class _Result:
    reply: Reply
    fds: list[int] = attrs.field(factory=list)  # to send; the host keeps them open...
    temporary: list[int] = attrs.field(factory=list)  # ...except these, closed once sent


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _fire(fd: int) -> None:
    with contextlib.suppress(OSError):  # a saturated counter: an event is pending anyway
        os.eventfd_write(fd, 1)


@final
class _Platform:
    """The host's event-channel and grant state, and the request handlers. Synchronous."""

    def __init__(self) -> None:
        self.domains: dict[int, _Domain] = {}
        #: Destroyed domains whose grants other domains still map (Xen's zombie domains).
        self.dying: list[_Domain] = []
        self.connections: set[_Connection] = set()
        self.lock = threading.RLock()

    # -- lifetime ---------------------------------------------------------------------------------

    def add_domain(self, domid: int) -> None:
        self.domains.setdefault(domid, _Domain(domid))

    def connect(self, domid: int) -> _Connection:
        with self.lock:
            conn = _Connection(domid)
            if domid in self.domains:
                self.connections.add(conn)
            else:  # accepted just before the domain was destroyed: every request gets EPIPE
                conn.closed = True
            return conn

    def disconnect(self, conn: _Connection) -> None:
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

    def _release_connections(self, conns: list[_Connection]) -> None:
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

    def handle(self, conn: _Connection, data: bytes) -> _Result:
        """Answer one request from ``conn``; never raises for anything the client sent."""
        with self.lock:
            try:
                request = Request.decode(data)
            except ValueError as exc:
                return _Result(Reply(errno.EINVAL, message=f"malformed request: {exc}"))
            if conn.closed:
                return _Result(Reply(errno.EPIPE, message="this connection was closed"))
            try:
                return self._dispatch(conn, request)
            except _RequestError as exc:
                return _Result(Reply(exc.errno, message=exc.message))

    def _dispatch(self, conn: _Connection, request: Request) -> _Result:
        a0, a1, a2 = request.args
        op = request.op
        if op != Op.GNT_MAP and request.words:
            raise _RequestError(errno.EINVAL, f"request {op} takes no words after the header")
        if op == Op.HELLO:
            return _Result(ok((VERSION, conn.domid, PAGE_SIZE)))
        if op == Op.EVTCHN_BIND_UNBOUND:
            return self._bind_unbound(conn, _domid(a0))
        if op == Op.EVTCHN_BIND_INTERDOMAIN:
            return self._bind_interdomain(conn, _domid(a0), a1)
        if op == Op.EVTCHN_CLOSE:
            self._close_port(self._own_port(conn, a0))
            return _Result(ok())
        if op == Op.EVTCHN_STATUS:
            port = self._own_port(conn, a0)
            remote = port.peer.number if port.peer else 0
            return _Result(ok((port.state, port.remote_domid, remote)))
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
            return _Result(ok())
        if op in (Op.INTRODUCE_DOMAIN, Op.DESTROY_DOMAIN):
            raise _RequestError(errno.EPERM, f"{Op(op).name} is for the host socket only")
        raise _RequestError(errno.ENOSYS, f"unknown request {op}")

    # -- event channels ---------------------------------------------------------------------------

    def _new_port(
        self, conn: _Connection, remote_domid: int, wait_fd: int, notify_fd: int
    ) -> _Port:
        domain = self.domains[conn.domid]
        number = next(n for n in range(1, MAX_PORTS_PER_DOMAIN + 2) if n not in domain.ports)
        port = _Port(conn.domid, number, remote_domid, wait_fd, notify_fd, conn)
        domain.ports[number] = port
        conn.ports[number] = port
        return port

    def _check_port_space(self, conn: _Connection) -> None:
        if len(self.domains[conn.domid].ports) >= MAX_PORTS_PER_DOMAIN:
            raise _RequestError(errno.ENOSPC, f"domain {conn.domid} has no free port")

    def _bind_unbound(self, conn: _Connection, remote_domid: int) -> _Result:
        self._check_port_space(conn)
        mine = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            theirs = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            os.close(mine)
            raise
        port = self._new_port(conn, remote_domid, mine, theirs)
        return _Result(ok((port.number,)), [mine, theirs])

    def _bind_interdomain(self, conn: _Connection, remote_domid: int, number: int) -> _Result:
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
        wait_fd = os.dup(target.notify_fd)
        try:
            notify_fd = os.dup(target.wait_fd)
        except BaseException:
            os.close(wait_fd)
            raise
        # Notifies sent before anyone was bound here are dropped, as Xen drops them.
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(wait_fd)
        port = self._new_port(conn, remote_domid, wait_fd, notify_fd)
        port.peer, target.peer = target, port
        port.state = target.state = PortState.CONNECTED
        return _Result(ok((port.number,)), [wait_fd, notify_fd])

    def _own_port(self, conn: _Connection, number: int) -> _Port:
        port = conn.ports.get(number)
        if port is None:
            raise _RequestError(errno.EBADF, f"port {number} is not bound on this connection")
        return port

    def _close_port(self, port: _Port) -> None:
        if port.closed:
            return
        port.closed = True
        del self.domains[port.domid].ports[port.number]
        del port.owner.ports[port.number]
        peer = port.peer
        if peer is not None and not peer.closed:
            peer.state = PortState.PEER_CLOSED
            _fire(peer.wait_fd)
        port.peer = None
        if peer is not None:
            peer.peer = None
        _close_quietly(port.wait_fd)
        _close_quietly(port.notify_fd)

    # -- grants -----------------------------------------------------------------------------------

    def _domain(self, domid: int) -> _Domain:
        domain = self.domains.get(domid)
        if domain is None:
            raise _RequestError(errno.ESRCH, f"there is no domain {domid} on this host")
        return domain

    def _add_handle(self, conn: _Connection, held: _Share | _Map) -> int:
        if len(conn.handles) >= MAX_HANDLES_PER_CONNECTION:
            raise _RequestError(errno.EMFILE, "too many shares and mappings on one connection")
        handle = conn.next_handle
        conn.next_handle = conn.next_handle % 0xFFFFFFFF + 1
        while handle in conn.handles:  # only after 2**32 handles
            handle = handle % 0xFFFFFFFF + 1
        conn.handles[handle] = held
        held.memory.users += 1
        return handle

    def _share(self, conn: _Connection, remote_domid: int, count: int) -> _Result:
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
            if domain.free_refs:
                ref = heapq.heappop(domain.free_refs)
            else:
                ref = domain.next_ref
                domain.next_ref += 1
            grant = _Grant(conn.domid, ref, remote_domid, memory, page, domain)
            domain.grants[ref] = grant
            grants.append(grant)
        handle = self._add_handle(conn, _Share(grants, memory))
        return _Result(ok((handle, count), [g.ref for g in grants]), [fd])

    def _map(
        self, conn: _Connection, remote_domid: int, refs: tuple[int, ...], *, writable: bool
    ) -> _Result:
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
            return _Result(ok((handle, offset, held.length)), [first.memory.fd])
        # A read-only open of the memfd, so that the mapper cannot map it writable.
        fd = os.open(f"/proc/self/fd/{first.memory.fd}", os.O_RDONLY | os.O_CLOEXEC)
        return _Result(ok((handle, offset, held.length)), [fd], [fd])

    def _set_unmap_notify(
        self, conn: _Connection, handle: int, offset: int, number: int
    ) -> _Result:
        held = conn.handles.get(handle)
        if held is None:
            raise _RequestError(errno.EBADF, f"no share or mapping with handle {handle}")
        if offset >= held.length:
            raise _RequestError(
                errno.EINVAL, f"offset {offset} is outside the {held.length}-byte region"
            )
        if isinstance(held, _Map) and not held.writable:
            raise _RequestError(errno.EINVAL, "an unmap-notify needs a writable mapping")
        port = self.domains[conn.domid].ports.get(number)
        if port is None:
            raise _RequestError(errno.EINVAL, f"port {number} is not bound in domain {conn.domid}")
        held.notify = _Notify(held.file_offset + offset, port)
        return _Result(ok())

    def _release(self, conn: _Connection, handle: int) -> None:
        held = conn.handles.pop(handle)
        if held.notify is not None:
            # UNMAP_NOTIFY_CLEAR_BYTE | UNMAP_NOTIFY_SEND_EVENT
            try:
                os.pwrite(held.memory.fd, b"\0", held.notify.file_offset)
            except OSError:
                log.exception("cannot clear an unmap-notify byte")
            port = held.notify.port
            if not port.closed and port.peer is not None and not port.peer.closed:
                _fire(port.notify_fd)
        domain = held.grants[0].table
        for grant in held.grants:
            if isinstance(held, _Map):
                grant.maps -= 1
            else:
                grant.revoked = True
            if grant.revoked and grant.maps == 0:
                del domain.grants[grant.ref]
                heapq.heappush(domain.free_refs, grant.ref)
        if domain.destroyed and not domain.grants:
            self.dying.remove(domain)
        held.memory.users -= 1
        if held.memory.users == 0:
            _close_quietly(held.memory.fd)


def _domid(value: int) -> int:
    try:
        return check_domid(value)
    except ValueError as exc:
        raise _RequestError(errno.EINVAL, str(exc)) from None


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


@final
class _LocalTransport:
    """A platform connection for a backend in the host's own process: direct calls."""

    def __init__(self, platform: _Platform, conn: _Connection) -> None:
        self._platform = platform
        self._conn = conn

    def request(self, request: Request) -> tuple[Reply, list[int]]:
        result = self._platform.handle(self._conn, request.encode())
        fds: list[int] = []
        try:
            for fd in result.fds:
                fds.append(os.dup(fd))
        except BaseException:
            for fd in fds:
                _close_quietly(fd)
            raise
        finally:
            for fd in result.temporary:
                _close_quietly(fd)
        # Round-trip the reply through its wire form, as a socket would.
        return Reply.decode(result.reply.encode()), fds

    def close(self) -> None:
        self._platform.disconnect(self._conn)


@final
class SimulatedHost:
    """A simulated Xen host for processes on this machine.

    Use it as ``async with SimulatedHost() as host:``; the servers run until the block ends,
    then every resource is released and the directory is removed. Dom0 always exists; other
    domains are created by :meth:`add_domain`, :meth:`backend` and :meth:`environ`, or by a
    process joining with :func:`~trio_vchan.sim.backend_from_environ`, and end with
    :meth:`destroy_domain` or when the host stops.

    Args:
        directory: where to put the sockets. By default a fresh private temporary directory;
            a given directory is created (mode 0700) if missing; an existing one must be
            empty, and keeps its mode.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._requested = None if directory is None else os.fspath(directory)
        self._directory: Path | None = None
        self._created_directory = False
        self._platform = _Platform()
        self._xenstore: XenStoreServer | None = None
        self._xenstore_baseline: set[str] = set()
        self._domains: dict[int, _ServedDomain] = {}
        self._nursery: trio.Nursery | None = None
        self._stack = contextlib.AsyncExitStack()
        self._listeners: list[trio.socket.SocketType] = []
        self._served = 0
        self._idle = trio.lowlevel.ParkingLot()
        self._local: list[Backend] = []
        self._stopped = False

    # -- lifetime ---------------------------------------------------------------------------------

    async def __aenter__(self) -> SimulatedHost:
        if self._directory is not None or self._stopped:
            raise RuntimeError("a SimulatedHost can be started only once")
        from ._xenstored import XenStoreServer

        self._make_directory()
        try:
            self._xenstore = XenStoreServer()
            self._xenstore_baseline = set(self._xenstore.paths())
            self._nursery = await self._stack.enter_async_context(trio.open_nursery())
            control = self._listen(self._path("host"), socket.SOCK_SEQPACKET)
            self._nursery.start_soon(self._accept_loop, control, self._serve_control, -1)
            self.add_domain(0)
            assert self._directory is not None
            register_local(str(self._directory), self.backend)
        except BaseException:
            await self._stop(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._stop(exc_type, exc, tb)

    async def _stop(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._stopped = True
        if self._directory is not None:
            register_local(str(self._directory), None)
        try:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            return await self._stack.__aexit__(exc_type, exc, tb)
        finally:
            for listener in self._listeners:
                listener.close()
            self._platform.close()
            self._remove_directory()

    def _make_directory(self) -> None:
        if self._requested is None:
            self._directory = Path(tempfile.mkdtemp(prefix="trio-vchan-sim-"))
            self._created_directory = True
        else:
            path = Path(self._requested).absolute()
            try:
                path.mkdir(mode=0o700)
                self._created_directory = True
            except FileExistsError:
                if not path.is_dir() or any(path.iterdir()):
                    raise ValueError(
                        f"the simulated host's directory {path} must be empty or absent"
                    ) from None
                # The caller's own directory keeps the mode the caller gave it.
            self._directory = path
        # Every socket path must fit in sun_path; check the longest one now.
        longest = self._directory / "domains" / "32751" / "xenstore"
        if len(os.fsencode(longest)) > _SOCKET_PATH_MAX:
            self._remove_directory()
            raise ValueError(
                f"the directory {self._directory} is too long for Unix socket paths "
                f"(at most {_SOCKET_PATH_MAX - len('/domains/32751/xenstore')} bytes)"
            )

    def _remove_directory(self) -> None:
        directory = self._directory
        if directory is None:
            return
        if self._created_directory:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            shutil.rmtree(directory / "domains", ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (directory / "host").unlink()

    # -- public interface -------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """The host's directory (what ``TRIO_VCHAN_SIM`` names).

        Raises:
            RuntimeError: the host is not running.
        """
        return str(self._running_directory())

    def add_domain(self, domid: int) -> None:
        """Create domain ``domid`` (its sockets and XenStore home) if it does not exist.

        Call it from the trio thread that runs the host.

        Raises:
            TypeError, ValueError: ``domid`` is not a valid domain id.
            RuntimeError: the host is not running.
        """
        check_domid(domid)
        directory = self._running_directory()
        if domid in self._domains:
            return
        assert self._nursery is not None
        assert self._xenstore is not None
        here = domain_dir(directory, domid)
        here.mkdir(mode=0o700, parents=True, exist_ok=True)
        xenstore = self._listen(here / "xenstore", socket.SOCK_STREAM)
        try:
            platform = self._listen(here / "platform", socket.SOCK_SEQPACKET)
        except BaseException:
            xenstore.close()
            raise
        with self._platform.lock:
            self._platform.add_domain(domid)
        before = set(self._xenstore.paths())
        self._xenstore.add_domain(domid)
        self._xenstore_baseline |= set(self._xenstore.paths()) - before
        served = _ServedDomain(domid, xenstore, platform)
        self._domains[domid] = served
        self._nursery.start_soon(self._serve_domain, served)

    def destroy_domain(self, domid: int) -> None:
        """Destroy domain ``domid`` now, as Xen's ``xl destroy`` does.

        What others see happens in this order, as if every process of the domain had died at
        the same moment:

        1. the unmap-notify of every share and mapping the domain holds is performed (the
           byte cleared, then the event sent), and the shares and mappings are released;
        2. every event-channel port of the domain is closed: each remote end is fired and
           reports peer closed (``SimEventChannel.peer_closed``);
        3. the domain's platform and XenStore connections are dropped, including those of
           :meth:`backend`, and its sockets are removed;
        4. ``/local/domain/<domid>`` is removed (firing its watches) and ``@releaseDomain``
           fires (for dom0's watches: other domains may not see special nodes).

        All of it is done when the call returns, except that the dropped connections are
        closed when the host's tasks next run; a request that arrives meanwhile fails
        (``EPIPE`` from the platform, the end of the stream from XenStore), never hangs. So a
        watcher that sees ``@releaseDomain`` also sees every effect on the platform.

        The domain's processes are not killed (the host does not know them): their fds and
        mmaps stay valid, but every request they make fails. Pages of the domain that another
        domain maps stay mapped (readable, and writable if mapped so) until that domain
        unmaps them, as on Xen, where a dying domain's granted pages live until the last
        foreign mapping goes; :meth:`leaks` lists their grants meanwhile. Afterwards the
        domain id can be used again: :meth:`add_domain` (or :meth:`backend`,
        :meth:`environ`, a joining process) creates a fresh domain. From another process:
        ``trio-vchan sim --destroy DOMID``.

        Call it from the trio thread that runs the host.

        Raises:
            TypeError, ValueError: ``domid`` is not a valid domain id, or is 0 (dom0 cannot be
                destroyed).
            ProcessLookupError: there is no domain ``domid`` (an :class:`OSError` with
                ``errno`` ``ESRCH``).
            RuntimeError: the host is not running.
        """
        check_domid(domid)
        directory = self._running_directory()
        if domid == 0:
            raise ValueError("domain 0 cannot be destroyed")
        served = self._domains.pop(domid, None)
        if served is None:
            raise ProcessLookupError(errno.ESRCH, f"there is no domain {domid} on this host")
        assert self._xenstore is not None
        self._platform.destroy_domain(domid)
        served.cancel_scope.cancel()
        self._xenstore.disconnect_domain(domid)
        for listener in (served.xenstore, served.platform):
            self._listeners.remove(listener)  # closed by _serve_domain as it ends
        shutil.rmtree(domain_dir(directory, domid), ignore_errors=True)
        self._xenstore.remove_domain(domid)
        self._xenstore_baseline &= set(self._xenstore.paths())

    def backend(self, domid: int) -> Backend:
        """Return a :class:`~trio_vchan.Backend` for domain ``domid``, in this process.

        Its event-channel and grant calls go straight to the host (a blocking socket would
        deadlock the host's own trio loop); XenStore is reached through its socket.

        Raises:
            TypeError, ValueError: ``domid`` is not a valid domain id.
            RuntimeError: the host is not running.
        """
        self.add_domain(domid)
        transport = _LocalTransport(self._platform, self._platform.connect(domid))
        directory = self._running_directory()
        hello(transport)
        return make_backend(domid, transport, domain_dir(directory, domid) / "xenstore")

    def environ(self, domid: int) -> dict[str, str]:
        """Return the variables a process needs to join this host as ``domid`` (and create it).

        Raises:
            TypeError, ValueError: ``domid`` is not a valid domain id.
            RuntimeError: the host is not running.
        """
        self.add_domain(domid)
        return {ENV_DIR: self.directory, ENV_DOMID: str(domid)}

    def leaks(self) -> list[str]:
        """Describe what is still allocated: ports, grants, mappings and XenStore nodes
        created since their domains were added. Empty when everything was released.

        Resources of processes whose connection the host has not yet seen close are still
        listed: :meth:`wait_idle` first.
        """
        found = self._platform.leaks()
        if self._xenstore is not None:
            found.extend(
                f"xenstore node {path}"
                for path in self._xenstore.paths()
                if path not in self._xenstore_baseline
            )
        return found

    @property
    def xenstore_requests(self) -> collections.Counter[tuple[int, str]]:
        """How many requests the simulated XenStore received, by ``(domid, operation)``.

        A new :class:`collections.Counter` each time (a snapshot). ``domid`` is the domain of
        the connection, ``operation`` the request type's name in ``xs_wire.h`` without
        ``XS_`` (``"READ"``, ``"WRITE"``, ``"TRANSACTION_START"``, ...; an unknown type code
        is named by its decimal number). Every request from any client (ours, Xen's own
        tools) counts as soon as the store reads it, whether it succeeds or fails, so it has
        been counted by the time its reply arrives. Count the round trips of one step by
        subtracting snapshots::

            before = host.xenstore_requests
            await step()
            assert host.xenstore_requests - before == Counter({(1, "READ"): 2})

        or start from zero with :meth:`reset_xenstore_requests`. The counts stay readable
        after the host stopped; before it started they are empty.
        """
        if self._xenstore is None:
            return collections.Counter()
        return collections.Counter(self._xenstore.requests)

    def reset_xenstore_requests(self) -> None:
        """Set every count of :attr:`xenstore_requests` back to zero."""
        if self._xenstore is not None:
            self._xenstore.requests.clear()

    async def wait_idle(self) -> None:
        """Wait until no client is connected to any socket of the host.

        Use it after other processes exited (and in-process XenStore clients closed), before
        :meth:`leaks`: the host notices a closed connection only when it next runs.
        """
        while self._served:
            await self._idle.park()
        await trio.lowlevel.checkpoint()

    # -- serving ----------------------------------------------------------------------------------

    def _running_directory(self) -> Path:
        if self._directory is None or self._stopped:
            raise RuntimeError("the simulated host is not running (use `async with`)")
        return self._directory

    def _path(self, name: str) -> Path:
        return self._running_directory() / name

    def _listen(self, path: Path, kind: int) -> trio.socket.SocketType:
        sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
        try:
            sock.bind(os.fspath(path))
            sock.listen(socket.SOMAXCONN)
            listener = trio.socket.from_stdlib_socket(sock)
        except BaseException:
            sock.close()
            raise
        self._listeners.append(listener)
        return listener

    async def _serve_domain(self, served: _ServedDomain) -> None:
        """Serve a domain's sockets until :meth:`destroy_domain` or the host stops."""
        try:
            with served.cancel_scope:
                async with trio.open_nursery() as nursery:
                    for listener, serve in (
                        (served.xenstore, self._serve_xenstore),
                        (served.platform, self._serve_platform),
                    ):
                        nursery.start_soon(self._accept_loop, listener, serve, served.domid)
        finally:
            served.xenstore.close()
            served.platform.close()

    async def _accept_loop(
        self, listener: trio.socket.SocketType, serve: _Server, domid: int
    ) -> None:
        """Accept connections and serve each in a child task, until cancelled."""
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("cannot accept a connection (%s); retrying", exc)
                        await trio.sleep(0.1)
                        continue
                    raise
                self._served += 1
                nursery.start_soon(self._serve_counted, conn, serve, domid)

    async def _serve_counted(
        self, conn: trio.socket.SocketType, serve: _Server, domid: int
    ) -> None:
        try:
            with conn:
                await serve(conn, domid)
        finally:
            self._served -= 1
            self._idle.unpark_all()

    async def _serve_xenstore(self, conn: trio.socket.SocketType, domid: int) -> None:
        assert self._xenstore is not None
        try:
            await self._xenstore.handle_connection(trio.SocketStream(conn), domid)
        except Exception:
            log.exception("the XenStore server failed on a connection of domain %d", domid)

    async def _serve_platform(self, conn: trio.socket.SocketType, domid: int) -> None:
        client = self._platform.connect(domid)
        try:
            await self._serve_requests(conn, lambda data: self._platform.handle(client, data))
        finally:
            self._platform.disconnect(client)

    async def _serve_control(self, conn: trio.socket.SocketType, domid: int) -> None:
        await self._serve_requests(conn, self._control_request)

    def _control_request(self, data: bytes) -> _Result:
        try:
            request = Request.decode(data)
        except ValueError as exc:
            return _Result(Reply(errno.EINVAL, message=f"malformed request: {exc}"))
        if request.op == Op.HELLO and not request.words:
            return _Result(ok((VERSION, 0xFFFFFFFF, PAGE_SIZE)))
        domain_ops: dict[int, Callable[[int], None]] = {
            Op.INTRODUCE_DOMAIN: self.add_domain,
            Op.DESTROY_DOMAIN: self.destroy_domain,
        }
        if request.op in domain_ops and not request.words:
            try:
                domain_ops[request.op](check_domid(request.args[0]))
            except ValueError as exc:
                return _Result(Reply(errno.EINVAL, message=str(exc)))
            except OSError as exc:
                return _Result(Reply(exc.errno or errno.EIO, message=exc.strerror or str(exc)))
            return _Result(ok())
        return _Result(
            Reply(
                errno.ENOSYS,
                message="the host socket takes HELLO, INTRODUCE_DOMAIN and DESTROY_DOMAIN",
            )
        )

    async def _serve_requests(self, conn: trio.socket.SocketType, answer: _Answer) -> None:
        ancillary = socket.CMSG_SPACE(FDS_MAX * array.array("i").itemsize)
        while True:
            try:
                data, ancdata, flags, _ = await conn.recvmsg(MESSAGE_MAX, ancillary)
            except OSError:
                return
            for fd in _received_fds(ancdata):  # clients send no fds; don't keep any
                _close_quietly(fd)
            if not data:
                return  # end of file (or a forbidden empty message)
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                result = _Result(Reply(errno.EMSGSIZE, message="request too long"))
            else:
                try:
                    result = answer(data)
                except Exception:
                    log.exception("internal error answering a request; dropping the client")
                    return
            try:
                fds = array.array("i", result.fds)
                ancdata_out = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())] if fds else []
                await conn.sendmsg([result.reply.encode()], ancdata_out)
            except OSError:
                return
            finally:
                for fd in result.temporary:
                    _close_quietly(fd)


if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    _Server = Callable[[trio.socket.SocketType, int], Awaitable[None]]
    _Answer = Callable[[bytes], _Result]
