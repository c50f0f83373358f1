"""A domain's side of the simulated host: event channels and grants over the platform socket.

Theory of operation
-------------------
Every call is one short request and reply on the domain's platform connection (a blocking
``SOCK_SEQPACKET`` socket; the format is in :mod:`._proto` and ``docs/sim-protocol.md``), so
the calls are synchronous like the ioctls they stand for, except that a release of pages is
sent without waiting for its reply (:meth:`Transport.post`): the host carries out a
connection's requests in order, so the next request (a vchan's last step, closing its port,
is one) finds it done. The connection is the process's
"open device": when it closes, even because the process was killed, the host releases
everything it holds and performs the unmap-notifies.

The fast paths never talk to the host: an :class:`SimEventChannel` holds two eventfds that the
host created, its own (``fileno()``, what the peer's notifies increment) and the peer's (what
``notify()`` increments). Pages are memfds, mapped (:mod:`trio_vchan._pages`) and closed: a
mapping holds no fd.

These calls block, so a process that runs the host cannot use them (the host's trio loop
could not answer): :func:`~trio_vchan.sim.backend_from_environ` gives such a process a
backend that calls its host directly.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol, final

import trio

from .._backend import (
    PAGE_SIZE,
    Backend,
    ChannelStatus,
    EventChannel,
    EventChannels,
    GrantMemory,
    Share,
    check_domid,
)
from .._backend import Mapping as MappingProtocol
from .._errors import BackendUnavailableError
from .._pages import Pages
from ._fds import ANCILLARY_SPACE, close_quietly, received_fds
from ._proto import (
    ENV_DIR,
    ENV_DOMID,
    MAP_WRITABLE,
    MAX_PAGES,
    MESSAGE_MAX,
    VERSION,
    Op,
    PortState,
    Reply,
    Request,
    domain_dir,
)

_REF_MAX: Final = 0xFFFFFFFF


class Transport(Protocol):
    """Carries platform requests to the host and brings back the reply and its fds."""

    def request(self, request: Request) -> tuple[Reply, list[int]]:
        """Send ``request``; return the reply and the fds that came with it (now ours).

        Raises:
            OSError: the host is gone (``EPIPE``) or broke the protocol (``EPROTO``).
        """
        ...

    def post(self, request: Request) -> None:
        """Send ``request`` without waiting for its reply, for a release whose failure nobody
        could act on: the host answers a connection's requests in order, so every later
        request finds it done. Its reply is read, and dropped, before the next request's.

        Raises:
            OSError: the host is gone (``EPIPE``).
        """
        ...

    def close(self) -> None:
        """Hang up, once the host has answered everything posted: the host releases
        everything this connection still holds. Idempotent."""
        ...


@final
class SocketTransport(Transport):
    """A platform connection over a Unix ``SOCK_SEQPACKET`` socket (another process's host)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._sock.connect(os.fspath(path))
        except BaseException:
            self._sock.close()
            raise
        # One request at a time, even if a caller uses threads: replies are not tagged.
        self._lock = threading.Lock()
        self._posted = 0  # requests sent by post() whose replies are still to be read

    def request(self, request: Request) -> tuple[Reply, list[int]]:
        with self._lock:
            self._send(request)
            self._settle()
            data, ancdata, flags, _ = self._sock.recvmsg(MESSAGE_MAX, ANCILLARY_SPACE)
        fds = received_fds(ancdata)
        try:
            reply = _decode_reply(data, flags)
        except BaseException:
            close_quietly(fds)
            raise
        return reply, fds

    def post(self, request: Request) -> None:
        with self._lock:
            self._send(request)
            self._posted += 1

    def close(self) -> None:
        with self._lock:
            if self._sock.fileno() >= 0:
                with contextlib.suppress(OSError):  # a host that hung up answers nothing
                    self._settle()
            self._sock.close()

    def _send(self, request: Request) -> None:
        if self._sock.fileno() < 0:
            raise OSError(errno.EPIPE, "this platform connection was closed")
        self._sock.sendall(request.encode())

    def _settle(self) -> None:
        """Read (and drop) the replies to what was posted: they come before any other."""
        while self._posted:
            data, ancdata, _, _ = self._sock.recvmsg(MESSAGE_MAX, ANCILLARY_SPACE)
            close_quietly(received_fds(ancdata))
            if not data:
                raise OSError(errno.EPIPE, "the simulated host hung up (has it stopped?)")
            self._posted -= 1


def _decode_reply(data: bytes, flags: int) -> Reply:
    if not data:
        raise OSError(errno.EPIPE, "the simulated host hung up (has it stopped?)")
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise OSError(errno.EPROTO, "the simulated host sent an oversized reply")
    try:
        return Reply.decode(data)
    except ValueError as exc:
        raise OSError(errno.EPROTO, f"the simulated host sent a bad reply: {exc}") from None


def _call(transport: Transport, what: str, request: Request, nfds: int) -> tuple[Reply, list[int]]:
    """Make a request; raise OSError for an error reply or a wrong number of fds."""
    reply, fds = transport.request(request)
    if reply.status:
        close_quietly(fds)
        raise OSError(reply.status, f"{what}: {reply.message}")
    if len(fds) != nfds:
        close_quietly(fds)
        raise OSError(errno.EPROTO, f"{what}: the host sent {len(fds)} fds, not {nfds}")
    return reply, fds


# -- event channels -------------------------------------------------------------------------------


_CHANNEL_STATUS: Final[dict[int, ChannelStatus]] = {
    PortState.UNBOUND: ChannelStatus.UNBOUND,
    PortState.CONNECTED: ChannelStatus.CONNECTED,
    PortState.PEER_CLOSED: ChannelStatus.PEER_CLOSED,
}


@final
class SimEventChannel(EventChannel):
    """One bound port. ``fileno()`` is an eventfd: readable while events are pending.

    When the other end closes (or its process dies), the host fires this end and
    :attr:`peer_closed` becomes True; notifies are then no-ops, as in Xen.
    """

    def __init__(self, transport: Transport, port: int, wait_fd: int, notify_fd: int) -> None:
        self._transport = transport
        self._port = port
        self._wait_fd = wait_fd
        self._notify_fd = notify_fd
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd {self._wait_fd}"
        return f"<SimEventChannel port {self._port}, {state}>"

    @property
    def port(self) -> int:
        """The local port number."""
        return self._port

    def fileno(self) -> int:
        """The eventfd to wait on (readable while events are pending); -1 once closed."""
        return -1 if self._closed else self._wait_fd

    def notify(self) -> None:
        """Fire the remote end (writes its eventfd directly: no host round trip).

        Raises:
            OSError: ``EBADF`` if this end was closed.
        """
        if self._closed:
            raise OSError(errno.EBADF, f"event channel port {self._port} was closed")
        with contextlib.suppress(BlockingIOError):  # saturated: an event is pending anyway
            os.eventfd_write(self._notify_fd, 1)

    def consume(self) -> tuple[int, ...]:
        """Clear the pending events (all notifies so far count as one); ``(port,)`` if there
        were any, else ``()``."""
        if self._closed:
            return ()
        try:
            os.eventfd_read(self._wait_fd)
        except BlockingIOError:
            return ()
        return (self._port,)

    def status(self) -> ChannelStatus:
        """The remote end's state, as the host's EVTCHN_STATUS says (PEER_CLOSED once this end
        is closed, or when the host is unreachable)."""
        if self._closed:
            return ChannelStatus.PEER_CLOSED
        try:
            reply, _ = _call(
                self._transport,
                f"status of port {self._port}",
                Request(Op.EVTCHN_STATUS, (self._port, 0, 0)),
                0,
            )
        except OSError:
            return ChannelStatus.PEER_CLOSED
        return _CHANNEL_STATUS.get(reply.values[0], ChannelStatus.UNKNOWN)

    @property
    def peer_closed(self) -> bool:
        """Whether the remote end has closed (asks the host; True once this end is closed).

        Raises:
            OSError: the host is unreachable.
        """
        if self._closed:
            return True
        reply, _ = _call(
            self._transport,
            f"status of port {self._port}",
            Request(Op.EVTCHN_STATUS, (self._port, 0, 0)),
            0,
        )
        return reply.values[0] == PortState.PEER_CLOSED

    def close(self) -> None:
        """Unbind the port (the other end is fired and sees :attr:`peer_closed`). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            # A request, not a post: a vchan closes its port last, so that once its close
            # returns, the host has also done the releases posted before it.
            _call(
                self._transport,
                f"close port {self._port}",
                Request(Op.EVTCHN_CLOSE, (self._port, 0, 0)),
                0,
            )
        except OSError:
            pass  # the host is gone or already released it: nothing is left to release there
        finally:
            close_quietly([self._wait_fd, self._notify_fd])


@final
class SimEventChannels(EventChannels):
    """A domain's event-channel device on the simulated host."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def bind_unbound(self, remote_domid: int) -> SimEventChannel:
        """Allocate a port for ``remote_domid`` to bind to.

        Raises:
            OSError: ``ENOSPC`` when the domain has no free port; ``EPIPE`` if the host is gone.
        """
        check_domid(remote_domid, "remote_domid")
        reply, fds = _call(
            self._transport,
            f"bind an unbound port for domain {remote_domid}",
            Request(Op.EVTCHN_BIND_UNBOUND, (remote_domid, 0, 0)),
            2,
        )
        return SimEventChannel(self._transport, reply.values[0], fds[0], fds[1])

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> SimEventChannel:
        """Bind to ``remote_port`` of ``remote_domid``.

        Raises:
            OSError: ``EINVAL`` if that port is not unbound and waiting for this domain,
                ``ESRCH`` if there is no such domain.
        """
        check_domid(remote_domid, "remote_domid")
        if not isinstance(remote_port, int) or not 0 < remote_port <= _REF_MAX:
            raise ValueError(f"remote_port must be a positive port number, not {remote_port!r}")
        reply, fds = _call(
            self._transport,
            f"bind to port {remote_port} of domain {remote_domid}",
            Request(Op.EVTCHN_BIND_INTERDOMAIN, (remote_domid, remote_port, 0)),
            2,
        )
        return SimEventChannel(self._transport, reply.values[0], fds[0], fds[1])


# -- grants ---------------------------------------------------------------------------------------


class _Region:
    """Mapped pages (holding no fd: :class:`~trio_vchan._pages.Pages`) plus the host handle that
    keeps them granted or mapped."""

    def __init__(
        self, transport: Transport, handle: int, fd: int, offset: int, length: int, writable: bool
    ) -> None:
        self._transport = transport
        self._handle = handle
        try:
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            self._pages: Pages | None = Pages(fd, length, prot, offset)
        except BaseException:
            self._release_handle()
            raise
        finally:
            os.close(fd)  # the mapping holds the memory
        self._length = length

    @property
    def buffer(self) -> memoryview:
        if self._pages is None:
            raise ValueError("these pages were already released")
        return self._pages.view

    def set_unmap_notify(self, offset: int, port: int) -> None:
        if self._pages is None:
            raise ValueError("these pages were already released")
        if not isinstance(offset, int) or not 0 <= offset < self._length:
            raise ValueError(f"offset must be 0..{self._length - 1}, not {offset!r}")
        if not isinstance(port, int) or not 0 < port <= _REF_MAX:
            raise ValueError(f"port must be a positive port number, not {port!r}")
        _call(
            self._transport,
            f"set an unmap-notify at offset {offset} with port {port}",
            Request(Op.GNT_SET_UNMAP_NOTIFY, (self._handle, offset, port)),
            0,
        )

    def close(self) -> None:
        if self._pages is None:
            return
        if not self._pages.release():
            raise BufferError(
                "cannot release the pages: views of the buffer are still alive; "
                "release them (memoryview.release() or del) first"
            )
        self._pages = None
        self._release_handle()

    def _release_handle(self) -> None:
        # If the host is gone or the connection closed, it released them already.
        with contextlib.suppress(OSError):
            self._transport.post(Request(Op.GNT_RELEASE, (self._handle, 0, 0)))


@final
class SimShare(Share):
    """Pages this domain granted; ``buffer`` is a shared, writable mmap of them."""

    def __init__(self, region: _Region, refs: Sequence[int]) -> None:
        self._region = region
        self._refs = tuple(refs)

    def __repr__(self) -> str:
        return f"<SimShare refs {list(self._refs)}>"

    @property
    def refs(self) -> Sequence[int]:
        """The grant refs, one per page."""
        return self._refs

    @property
    def buffer(self) -> memoryview:
        """The pages (writable).

        Raises:
            ValueError: after :meth:`close`.
        """
        return self._region.buffer

    def set_unmap_notify(self, offset: int, port: int) -> None:
        """On release or process death, zero the byte at ``offset`` and fire local ``port``.

        Raises:
            OSError: ``EINVAL`` if ``port`` is not a bound port of this domain.
        """
        self._region.set_unmap_notify(offset, port)

    def close(self) -> None:
        """Unmap and ungrant the pages (and perform the unmap-notify). Idempotent.

        Raises:
            BufferError: views of :attr:`buffer` are still alive (nothing is released).
        """
        self._region.close()


@final
class SimMapping(MappingProtocol):
    """Pages another domain granted us, mapped (read-only unless mapped writable)."""

    def __init__(self, region: _Region) -> None:
        self._region = region

    @property
    def buffer(self) -> memoryview:
        """The mapped pages.

        Raises:
            ValueError: after :meth:`close`.
        """
        return self._region.buffer

    def set_unmap_notify(self, offset: int, port: int) -> None:
        """As :meth:`SimShare.set_unmap_notify`; the mapping must be writable.

        Raises:
            OSError: ``EINVAL`` for a read-only mapping or a port that is not bound here.
        """
        self._region.set_unmap_notify(offset, port)

    def close(self) -> None:
        """Unmap (and perform the unmap-notify). Idempotent.

        Raises:
            BufferError: views of :attr:`buffer` are still alive (nothing is released).
        """
        self._region.close()


@final
class SimGrantMemory(GrantMemory):
    """Grant sharing and mapping for one domain of the simulated host."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def share(self, remote_domid: int, count: int) -> SimShare:
        """Grant ``count`` fresh zeroed pages to ``remote_domid``.

        Raises:
            ValueError: ``count`` is not 1..1024.
            OSError: ``ENOSPC`` when the domain's grant table is full.
        """
        check_domid(remote_domid, "remote_domid")
        if not isinstance(count, int) or not 1 <= count <= MAX_PAGES:
            raise ValueError(f"count must be 1..{MAX_PAGES}, not {count!r}")
        reply, fds = _call(
            self._transport,
            f"share {count} pages with domain {remote_domid}",
            Request(Op.GNT_SHARE, (remote_domid, count, 0)),
            1,
        )
        if len(reply.words) != count:
            close_quietly(fds)
            raise OSError(errno.EPROTO, f"the host returned {len(reply.words)} refs, not {count}")
        region = _Region(self._transport, reply.values[0], fds[0], 0, count * PAGE_SIZE, True)
        return SimShare(region, reply.words)

    def map(self, remote_domid: int, refs: Sequence[int], *, writable: bool) -> SimMapping:
        """Map the pages ``refs`` that ``remote_domid`` granted us, contiguously.

        Several refs are mapped together only if they are consecutive pages of one share
        (as libxenvchan's rings are); otherwise ``EINVAL``.

        Raises:
            OSError: ``ENOENT`` (no such grant), ``EACCES`` (granted to another domain),
                ``ESRCH`` (no such domain), ``EINVAL`` (pages not contiguous).
        """
        check_domid(remote_domid, "remote_domid")
        refs = list(refs)
        if not 1 <= len(refs) <= MAX_PAGES:
            raise ValueError(f"map 1..{MAX_PAGES} refs, not {len(refs)}")
        for ref in refs:
            if not isinstance(ref, int) or not 0 < ref <= _REF_MAX:
                raise ValueError(f"grant refs are 1..{_REF_MAX}, not {ref!r}")
        reply, fds = _call(
            self._transport,
            f"map grant refs {refs} of domain {remote_domid}",
            Request(Op.GNT_MAP, (remote_domid, MAP_WRITABLE if writable else 0, 0), tuple(refs)),
            1,
        )
        handle, offset, length = reply.values
        return SimMapping(_Region(self._transport, handle, fds[0], offset, length, writable))


# -- backends -------------------------------------------------------------------------------------


def hello(transport: Transport) -> int:
    """Check the host's protocol version; return the domid the connection acts as."""
    reply, _ = _call(transport, "hello", Request(Op.HELLO, (VERSION, 0, 0)), 0)
    if reply.values[0] != VERSION:
        raise OSError(errno.EPROTO, f"the host speaks version {reply.values[0]}, not {VERSION}")
    return reply.values[1]


def make_backend(domid: int, transport: Transport, xenstore_path: Path) -> Backend:
    """Wrap a platform connection as domain ``domid``'s :class:`Backend`."""

    async def connect_xenstore() -> trio.abc.Stream:
        return await trio.open_unix_socket(os.fspath(xenstore_path))

    return Backend(
        domid=domid,
        events=SimEventChannels(transport),
        memory=SimGrantMemory(transport),
        connect_xenstore=connect_xenstore,
        close=transport.close,
        instance=f"simulated host {xenstore_path}",
    )


def parse_domid(text: str) -> int:
    """Parse ``TRIO_VCHAN_DOMID``.

    Raises:
        ValueError: not a decimal domain id.
    """
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"{ENV_DOMID} must be a decimal domain id, not {text!r}")
    return check_domid(int(text), ENV_DOMID)


def parse_environ(environ: Mapping[str, str]) -> tuple[str, int]:
    """The host directory and the domain id that ``environ`` names.

    Raises:
        BackendUnavailableError: a variable is unset.
        ValueError: ``TRIO_VCHAN_DOMID`` is not a valid domain id.
    """
    directory = environ.get(ENV_DIR)
    if not directory:
        raise BackendUnavailableError(
            f"{ENV_DIR} is not set: run under `trio-vchan sim` or set it to a simulated "
            "host's directory"
        )
    domid_text = environ.get(ENV_DOMID)
    if domid_text is None:
        raise BackendUnavailableError(
            f"{ENV_DIR} is set but {ENV_DOMID} is not: set it to this process's domain id"
        )
    return directory, parse_domid(domid_text)


def join(directory: str, domid: int) -> Backend:
    """Join the simulated host serving ``directory`` (from another process) as ``domid``.

    The domain is created if the host does not have it yet.

    Raises:
        BackendUnavailableError: the directory is not a running host.
    """
    control = Path(directory) / "host"
    if not control.is_socket():
        raise BackendUnavailableError(
            f"{ENV_DIR}={directory!r} is not a running simulated host (no socket {control})"
        )
    here = domain_dir(directory, domid)
    try:
        if not (here / "platform").is_socket():
            introducer = SocketTransport(control)
            try:
                _call(
                    introducer,
                    f"introduce domain {domid}",
                    Request(Op.INTRODUCE_DOMAIN, (domid, 0, 0)),
                    0,
                )
            finally:
                introducer.close()
        transport = SocketTransport(here / "platform")
    except OSError as exc:
        raise BackendUnavailableError(
            f"cannot join the simulated host at {directory!r} as domain {domid}: {exc}"
        ) from exc
    try:
        acting_as = hello(transport)
    except BaseException:
        transport.close()
        raise
    if acting_as != domid:
        transport.close()
        raise OSError(errno.EPROTO, f"the host's socket for domain {domid} is another's")
    return make_backend(domid, transport, here / "xenstore")
