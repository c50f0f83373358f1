"""VchanStream (a trio.abc.Stream over a connected vchan) and VchanListener.

Theory of operation
-------------------
The sans-IO :class:`~trio_vchan._ring.RingEndpoint` decides; this module waits and sends events.
Every blocking call follows one pattern: take a notifier token, look at the shared memory, act
if possible, else ask the peer for an event (``request_*_notify``, which re-checks the ring
after posting the request) and wait for a generation newer than the token. Because the token is
taken before the look, an event that arrives in between is never lost.

End of stream: a peer that closes first writes its last data, then sets its live byte to 0. We
read the live byte *before* reading the ring, so "exited and the ring is empty" really means
every byte written before the close has been delivered. A peer can also vanish without
clearing its byte (a peer that asked for no unmap-notify, or whose port closed before its
mapping went): a side that wakes and finds nothing to do asks the backend whether the peer's
port is still there, and a closed one counts as the peer having exited.

A :class:`~trio_vchan.ProtocolError` from the core (a hostile or broken page) breaks the stream
for good; callers see :class:`trio.BrokenResourceError` caused by it.
"""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, ParamSpec, TypeAlias, TypeVar, final

import trio

from ._advertisement import PeerGoneError
from ._backend import ChannelStatus
from ._errors import IncompleteReceiveError, ProtocolError
from ._layout import Live, Role
from ._notify import Notifier
from ._ring import ring_step

if TYPE_CHECKING:
    from ._handshake import Endpoint

_T = TypeVar("_T")
_A = TypeVar("_A")
_P = ParamSpec("_P")
DEFAULT_RECEIVE_SIZE: Final = 65536
_BUSY_POLL_MAX: Final = 0.01


class _ConflictDetector:
    """Raises BusyResourceError when two tasks use one direction at once."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(self, *exc_info: object) -> None:
        self._held = False


def _check_max_bytes(max_bytes: int | None) -> int:
    if max_bytes is None:
        return DEFAULT_RECEIVE_SIZE
    max_bytes = operator.index(max_bytes)
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1 or None, not {max_bytes}")
    return max_bytes


#: What send_all takes: any bytes-like object.
ReadableBuffer: TypeAlias = "bytes | bytearray | memoryview"
#: What receive_into fills: any writable bytes-like object.
WritableBuffer: TypeAlias = "bytearray | memoryview"


def _readable_bytes(data: ReadableBuffer) -> bytes | bytearray | memoryview:
    """``data`` as something whose len() counts bytes (as is, for the usual bytes-like types)."""
    if type(data) is bytes or type(data) is bytearray:
        return data
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _trim(views: list[memoryview], limit: int | None) -> list[memoryview]:
    """The first ``limit`` bytes of ``views`` (all of them for None)."""
    if limit is None or sum(map(len, views)) <= limit:
        return views
    trimmed = []
    for view in views:
        if limit > 0:
            trimmed.append(view[:limit])
            limit -= len(trimmed[-1])
        view.release()
    return trimmed


def _fd_io(
    io: Callable[[int, list[memoryview]], int], fd: int, views: list[memoryview]
) -> int | None:
    """``io(fd, views)`` (os.readv or os.writev), the views of the ring released after; None
    when ``fd`` would block."""
    try:
        return io(fd, views)
    except BlockingIOError:
        return None
    finally:
        for view in views:
            view.release()


def _writable_bytes(buffer: WritableBuffer) -> memoryview:
    view = memoryview(buffer)
    if view.readonly:
        raise ValueError("the buffer to receive into is read-only")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if not view:
        raise ValueError("the buffer to receive into is empty")
    return view


@final
class VchanStream(trio.abc.Stream):
    """A connected vchan endpoint: a :class:`trio.abc.Stream` (vchan has no half-close).

    Obtain one from :func:`trio_vchan.serve`, :func:`trio_vchan.connect` or
    :class:`trio_vchan.VchanListener`.
    """

    def __init__(
        self, endpoint: Endpoint, on_close: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._endpoint = endpoint
        self._ring = endpoint.ring
        self._channel = endpoint.channel
        self._notifier = Notifier(endpoint.channel)
        self._on_close = on_close
        self._closed = False
        self._broken: BaseException | None = None
        self._peer_gone: PeerGoneError | None = None
        self._peer_port_gone = False
        self._busy_poll = 0.0
        self._at_end = False
        self._unread = bytearray()  # taken from the ring by a cancelled receive_exactly
        self._fd_waits: set[trio.CancelScope] = set()  # send_from_fd/receive_to_fd waiting
        self._send_conflict = _ConflictDetector("another task is already sending on this vchan")
        self._receive_conflict = _ConflictDetector(
            "another task is already receiving on this vchan"
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return (
            f"<VchanStream {self.role.name.lower()} with domain {self.peer_domid}"
            f" at {self.path}, {state}>"
        )

    @property
    def peer_domid(self) -> int:
        """The domain at the other end."""
        return self._endpoint.peer_domid

    @property
    def role(self) -> Role:
        """Whether this end is the server or the client."""
        return self._endpoint.role

    @property
    def path(self) -> str:
        """The vchan's XenStore directory."""
        return self._endpoint.path

    # -- guarded access to the core -----------------------------------------------------------

    def _check_status(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this vchan was already closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("this vchan is broken") from self._broken

    def _guard(self, operation: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run a step of the core or the backend: the one place where a protocol or OS error
        breaks the stream (trio.BrokenResourceError, caused by it)."""
        self._check_status()
        try:
            return operation(*args, **kwargs)
        except (ProtocolError, OSError) as exc:
            self._broken = exc
            what = "broke the vchan protocol" if isinstance(exc, ProtocolError) else "failed"
            raise trio.BrokenResourceError(f"the vchan {what}: {exc}") from exc

    @property
    def busy_poll(self) -> float:
        """Seconds to spin on the ring before sleeping on the event channel (default 0).

        A few tens of microseconds cut the latency of request/response traffic, at the cost of
        a busy CPU while waiting. At most 0.01.
        """
        return self._busy_poll

    @busy_poll.setter
    def busy_poll(self, seconds: float) -> None:
        if not 0 <= seconds <= _BUSY_POLL_MAX:
            raise ValueError(f"busy_poll must be 0..{_BUSY_POLL_MAX} seconds, not {seconds!r}")
        self._busy_poll = float(seconds)

    def peer_live(self) -> Live:
        """The peer's state as its live byte says now.

        Raises:
            trio.ClosedResourceError: after :meth:`aclose`.
            trio.BrokenResourceError: the byte holds a value the protocol does not allow.
        """
        return self._guard(self._ring.peer_live)

    @property
    def data_ready(self) -> int:
        """Bytes that :meth:`receive_some` can return now without waiting."""
        return len(self._unread) + self._guard(self._ring.data_ready)

    @property
    def buffer_space(self) -> int:
        """Bytes that can be written into the ring now without waiting."""
        return self._guard(self._ring.buffer_space)

    # -- receiving -----------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Wait until data is there, then return up to ``max_bytes`` of it.

        Returns ``b""`` at end of stream: the peer closed and everything it wrote before was
        received. While the peer waits for room, a call takes a quarter of the ring at most
        (the peer is told at once, and refills while the next call takes the rest).

        Raises:
            trio.BusyResourceError: another task is receiving.
            trio.ClosedResourceError: this stream was closed (before or during the call).
            trio.BrokenResourceError: the peer broke the protocol or the platform failed.
        """
        with self._receive_conflict:
            limit = _check_max_bytes(max_bytes)
            await trio.lowlevel.checkpoint_if_cancelled()
            return await self._receive_until(self._read_step, limit)

    def receive_nowait(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Return up to ``max_bytes`` of what has arrived, without waiting (and without a
        checkpoint: a loop over it lets no other task run). ``b""`` at end of stream.

        Raises:
            trio.WouldBlock: nothing has arrived yet; :meth:`receive_some` waits for it.
            trio.BusyResourceError, trio.ClosedResourceError, trio.BrokenResourceError: as
                :meth:`receive_some`.
        """
        with self._receive_conflict:
            data = self._guard(self._read_step, _check_max_bytes(max_bytes), False)
            if data is None:
                raise trio.WouldBlock
            return data

    async def receive_into(self, buffer: WritableBuffer) -> int:
        """Wait until data is there, then copy up to ``len(buffer)`` bytes of it into
        ``buffer`` (any writable bytes-like object, as for sockets' ``recv_into``); returns how
        many. Nothing is allocated. Returns 0 at end of stream. Takes a quarter of the ring
        at most while the peer waits for room, as :meth:`receive_some`.

        Raises:
            ValueError: ``buffer`` is empty or read-only.
            trio.BusyResourceError, trio.ClosedResourceError, trio.BrokenResourceError: as
                :meth:`receive_some`.
        """
        with self._receive_conflict, _writable_bytes(buffer) as target:
            await trio.lowlevel.checkpoint_if_cancelled()
            return await self._receive_until(self._read_into_step, target)

    def receive_into_nowait(self, buffer: WritableBuffer) -> int:
        """:meth:`receive_into` without waiting: 0 at end of stream.

        Raises:
            trio.WouldBlock: nothing has arrived yet.
            ValueError, trio.BusyResourceError, trio.ClosedResourceError,
                trio.BrokenResourceError: as :meth:`receive_into`.
        """
        with self._receive_conflict, _writable_bytes(buffer) as target:
            count = self._guard(self._read_into_step, target, False)
            if count is None:
                raise trio.WouldBlock
            return count

    async def receive_exactly(self, count: int) -> bytes | bytearray:
        """Wait for exactly ``count`` bytes and return them (libxenvchan's ``recv``), for
        protocols with fixed-size headers and messages.

        Up to the read ring's size, nothing is consumed until all ``count`` bytes are there, so
        a cancelled call leaves them all in the ring; a larger ``count`` is received piecewise,
        and a cancelled call leaves what it took for the next receive call.

        Raises:
            IncompleteReceiveError: the peer closed first; its ``partial`` holds what arrived.
            trio.BusyResourceError, trio.ClosedResourceError, trio.BrokenResourceError: as
                :meth:`receive_some`.
        """
        count = operator.index(count)
        if count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        with self._receive_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            if not count:  # an empty message (a header said 0, say)
                self._check_status()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            if count <= self._ring.read_size and not self._unread:
                # nothing is taken until all of it is there: a cancel leaves it in the ring
                return await self._receive_until(self._read_whole_step, count, needs=count)
            data, blocked = await self._receive_pieces(count)
            if not blocked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def _receive_until(
        self, step: Callable[[_A, bool], _T | None], argument: _A, needs: int = 1
    ) -> _T:
        """Run a receive step until it returns something, waiting for ``needs`` bytes in
        between; then the call's checkpoint, unless a wait that blocked was it already."""
        blocked = woke = False
        while True:
            token = self._notifier.token()  # before looking: no lost wake-ups
            result = self._guard(step, argument, woke)
            if result is not None:
                if not blocked:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return result
            woke = await self._wait_for_data(token, needs)
            blocked |= woke

    async def _receive_pieces(self, count: int) -> tuple[bytearray, bool]:
        buffer = bytearray(count)
        received = 0
        blocked = woke = False
        try:
            with memoryview(buffer) as whole:
                while received < count:
                    token = self._notifier.token()
                    taken = self._guard(self._read_into_step, whole[received:], woke)
                    if taken == 0:  # end of stream
                        break
                    if taken is not None:
                        received += taken
                        woke = False
                        continue
                    woke = await self._wait_for_data(token)
                    blocked |= woke
        except BaseException:
            if not self._at_end:  # cancelled, say: the next receive returns what we took
                self._unread = buffer[:received] + self._unread
            raise
        if received < count:
            raise IncompleteReceiveError(buffer[:received], count)
        return buffer, blocked

    # The receive steps: one look at the ring. Each returns what it took, an end-of-stream value
    # (b"" or 0), or None for "nothing yet". ``woke``: the caller was woken and found nothing
    # before, so a peer that vanished without a word may be why.

    def _read_step(self, limit: int, woke: bool) -> bytes | bytearray | None:
        if self._unread:
            taken, self._unread = self._unread[:limit], self._unread[limit:]
            return taken
        if self._at_end:  # end of stream is final, whatever the peer writes afterwards
            return b""
        data, notify_peer, live = self._ring.read(limit)
        if notify_peer:
            self._channel.notify()
        if data:
            return data
        return b"" if self._ended(live, woke) else None

    def _read_into_step(self, target: memoryview, woke: bool) -> int | None:
        if self._unread:
            count = min(len(self._unread), len(target))
            target[:count] = self._unread[:count]
            del self._unread[:count]
            return count
        if self._at_end:
            return 0
        count, notify_peer, live = self._ring.read_into(target)
        if notify_peer:
            self._channel.notify()
        if count:
            return count
        return 0 if self._ended(live, woke) else None

    def _read_whole_step(self, count: int, woke: bool) -> bytes | bytearray | None:
        if self._at_end:
            raise IncompleteReceiveError(b"", count)
        ring = self._ring
        live = ring.peer_live()  # before the ring
        take = count
        if ring.data_ready() < count:
            if not self._ended(live, woke):
                return None
            take = ring.data_ready()  # all there is, for the error
        data, notify_peer, _ = ring.read(take, at_once=True) if take else (b"", False, live)
        if notify_peer:
            self._channel.notify()
        if self._at_end:
            raise IncompleteReceiveError(data, count)
        return data

    def _ended(self, live: Live, woke: bool) -> bool:
        """With the ring empty: whether the stream has ended (the peer exited, or its port
        closed without a word); raises if the peer's domain was destroyed."""
        if live is Live.EXITED or self._peer_port_closed(woke):
            self._at_end = True
            return True
        if self._peer_gone is not None:
            raise trio.BrokenResourceError(str(self._peer_gone)) from self._peer_gone
        return False

    # -- sending -------------------------------------------------------------------------------

    async def send_all(self, data: ReadableBuffer) -> None:
        """Write all of ``data``, waiting for ring space as often as needed.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: this stream was closed (before or during the call).
            trio.BrokenResourceError: the peer closed the vchan or broke the protocol.
        """
        with self._send_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            source = _readable_bytes(data)
            sent = self._guard(self._write_step, source, False)
            blocked = False
            if sent < len(source):
                with memoryview(source) as view:
                    blocked = await self._send_rest(view[sent:])
            if not blocked:  # a wait that blocked was this call's checkpoint already
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def _send_rest(self, remaining: memoryview) -> bool:
        """Write the rest of a send_all as space appears; returns whether a wait blocked."""
        blocked = woke = False
        while remaining:
            token = self._notifier.token()
            accepted = self._guard(self._write_step, remaining, False)
            if accepted:
                remaining = remaining[accepted:]
                woke = False
                continue
            if self._guard(self._peer_port_closed, woke):
                raise trio.BrokenResourceError("peer closed the vchan (its port is gone)")
            woke = await self._wait_for_space(token)
            blocked |= woke
        return blocked

    def send_nowait(self, data: ReadableBuffer) -> None:
        """Write all of ``data`` now, or nothing: for many small messages, each whole in the
        ring, without a checkpoint per message (a loop over it lets no other task run).

        Raises:
            trio.WouldBlock: the ring lacks room for all of it; nothing was written, and
                ``await send_all(data)`` sends it, waiting for room.
            ValueError: ``data`` is larger than the ring (it could never fit at once).
            trio.BusyResourceError, trio.ClosedResourceError, trio.BrokenResourceError: as
                :meth:`send_all`.
        """
        with self._send_conflict:
            source = _readable_bytes(data)
            if len(source) > self._ring.write_size:
                raise ValueError(
                    f"{len(source)} bytes cannot fit the {self._ring.write_size}-byte ring at"
                    " once: send them with send_all"
                )
            if not self._guard(self._write_step, source, True) and source:
                raise trio.WouldBlock

    def _write_step(self, data: bytes | bytearray | memoryview, whole: bool) -> int:
        """Write what fits now (with ``whole``: all or nothing); returns how much that was."""
        if self._peer_gone is not None:
            raise trio.BrokenResourceError(str(self._peer_gone)) from self._peer_gone
        accepted, notify_peer, live = self._ring.write(data, whole)
        if notify_peer:
            self._channel.notify()
        if live is Live.EXITED:
            raise trio.BrokenResourceError("peer closed the vchan")
        return accepted

    async def wait_send_all_might_not_block(self) -> None:
        """Return once there is space in the ring (or the peer has gone, so sending fails fast).

        Raises:
            trio.BusyResourceError: another task is sending or waiting to send.
            trio.ClosedResourceError: this stream was closed.
        """
        with self._send_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            woke = False
            while True:
                token = self._notifier.token()
                if self.peer_live() is Live.EXITED or self.buffer_space > 0:
                    break
                if self._guard(self._peer_port_closed, woke):
                    break
                woke = await self._wait_for_space(token)
            await trio.lowlevel.cancel_shielded_checkpoint()

    # -- between the ring and a file descriptor ------------------------------------------------

    async def send_from_fd(self, fd: int, max_bytes: int | None = None) -> int:
        """Read once from ``fd`` straight into the ring (no buffer in between): wait until
        the ring has space and ``fd`` has data, read up to ``max_bytes`` (default: a quarter
        of the ring, see below), publish it; returns how many bytes that was, 0 at ``fd``'s
        end of file.

        A quarter of the ring at a time keeps both ends copying at once: the peer drains
        one part while this call fills the next. Steps of the whole ring make each end wait
        while the other copies, which makes a file copy 2-3 times slower.

        Regular files are read as they are; a pipe, socket or terminal must be in non-blocking
        mode (``os.set_blocking(fd, False)``), and is then waited on with trio. A copy of a
        whole file is ``while await stream.send_from_fd(fd): pass``.

        Raises:
            OSError: reading ``fd`` failed (nothing was sent; the stream stays usable).
            trio.BusyResourceError, trio.ClosedResourceError, trio.BrokenResourceError: as
                :meth:`send_all`.
        """
        limit = (
            ring_step(self._ring.write_size) if max_bytes is None else _check_max_bytes(max_bytes)
        )
        with self._send_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            blocked = woke = False
            while True:
                token = self._notifier.token()
                views = self._guard(self._free_space, limit)
                if not views:
                    if self._guard(self._peer_port_closed, woke):
                        raise trio.BrokenResourceError("peer closed the vchan (its port is gone)")
                    woke = await self._wait_for_space(token)
                    blocked |= woke
                    continue
                taken = _fd_io(os.readv, fd, views)
                if taken is None:
                    await self._wait_fd(trio.lowlevel.wait_readable, fd)
                    blocked = True
                    continue
                if taken:
                    self._guard(self._commit, taken)
                if not blocked:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return taken

    def _free_space(self, limit: int | None) -> list[memoryview]:
        if self._peer_gone is not None:
            raise trio.BrokenResourceError(str(self._peer_gone)) from self._peer_gone
        views, live = self._ring.writable()
        if live is Live.EXITED:
            for view in views:
                view.release()
            raise trio.BrokenResourceError("peer closed the vchan")
        return _trim(views, limit)

    def _commit(self, count: int) -> None:
        if self._ring.commit(count):
            self._channel.notify()

    async def receive_to_fd(self, fd: int, max_bytes: int | None = None) -> int:
        """Write once from the ring straight to ``fd`` (no buffer in between): wait until
        data has arrived and ``fd`` takes some, write up to ``max_bytes`` of it (default: a
        quarter of the ring, as for :meth:`send_from_fd`, so that the peer refills the space
        this call frees while it writes the rest); returns how many bytes ``fd`` took (only
        those are consumed), 0 at end of stream.

        As for :meth:`send_from_fd`, a pipe, socket or terminal must be non-blocking; a
        cancelled call loses nothing, what ``fd`` did not take stays in the ring.

        Raises:
            OSError: writing ``fd`` failed (nothing was consumed).
            trio.BusyResourceError, trio.ClosedResourceError, trio.BrokenResourceError: as
                :meth:`receive_some`.
        """
        limit = (
            ring_step(self._ring.read_size) if max_bytes is None else _check_max_bytes(max_bytes)
        )
        with self._receive_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            blocked = woke = False
            while True:
                if self._unread:  # what a cancelled receive_exactly took, first
                    unread = [memoryview(self._unread)[:limit]]
                    written = _fd_io(os.writev, fd, unread)
                    if written is None:
                        await self._wait_fd(trio.lowlevel.wait_writable, fd)
                        blocked = True
                        continue
                    del self._unread[:written]
                    taken = written
                    break
                token = self._notifier.token()
                views = self._guard(self._waiting_data, limit, woke)
                if views is None:
                    taken = 0  # end of stream
                    break
                if not views:
                    woke = await self._wait_for_data(token)
                    blocked |= woke
                    continue
                written = _fd_io(os.writev, fd, views)
                if written is None:
                    await self._wait_fd(trio.lowlevel.wait_writable, fd)
                    blocked = True
                    continue
                self._guard(self._consume, written)
                taken = written
                break
            if not blocked:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return taken

    async def _wait_fd(self, wait: Callable[[int], Awaitable[None]], fd: int) -> None:
        """Wait until ``fd`` may be ready (``trio.lowlevel.wait_readable``/``wait_writable``);
        a close of this stream ends the wait, as it ends waits on the event channel."""
        with trio.CancelScope() as scope:
            self._fd_waits.add(scope)
            try:
                await wait(fd)
            finally:
                self._fd_waits.discard(scope)
        if scope.cancelled_caught:
            raise trio.ClosedResourceError("this vchan was closed while waiting for descriptor")

    def _waiting_data(self, limit: int | None, woke: bool) -> list[memoryview] | None:
        """Views of the data in the ring; [] for "nothing yet", None at end of stream."""
        if self._at_end:
            return None
        views, live = self._ring.readable()
        if views:
            return _trim(views, limit)
        return None if self._ended(live, woke) else []

    def _consume(self, count: int) -> None:
        if self._ring.consume(count):
            self._channel.notify()

    # -- waiting -------------------------------------------------------------------------------

    async def _wait_for_data(self, token: int, count: int = 1) -> bool:
        """Wait until at least ``count`` bytes may be in the ring (or the peer may have closed):
        spin for ``busy_poll`` seconds if asked to, else ask the peer for an event, look again
        (data that came meanwhile would not be announced) and sleep until an event arrives
        after ``token``. Returns whether the task blocked."""
        ring = self._ring
        if self._busy_poll and self._guard(self._spin, ring.data_ready, count):
            return False
        if self._guard(ring.request_data_notify) >= count:
            return False
        return await self._wait(token)

    async def _wait_for_space(self, token: int) -> bool:
        """The same for ring space."""
        ring = self._ring
        if self._busy_poll and self._guard(self._spin, ring.buffer_space, 1):
            return False
        if self._guard(ring.request_space_notify):
            return False
        return await self._wait(token)

    def _spin(self, available: Callable[[], int], count: int) -> bool:
        deadline = time.perf_counter() + self._busy_poll
        while time.perf_counter() < deadline:
            if available() >= count:
                return True
        return False

    async def _wait(self, token: int) -> bool:
        try:
            return await self._notifier.wait(after=token)
        except trio.ClosedResourceError:
            raise trio.ClosedResourceError("this vchan was already closed") from None

    def peer_domain_destroyed(self) -> None:
        """Told by the session: the peer's domain is gone. What it wrote before can still be
        received; after that, and for every send, BrokenResourceError."""
        self._peer_gone = PeerGoneError(f"domain {self.peer_domid} (the peer) was destroyed")
        self._notifier.interrupt()

    def _peer_port_closed(self, woke: bool) -> bool:
        """Whether the peer's end of our event channel has closed. The backend is asked only
        after a wake-up that found nothing to do (it may be a platform request); once closed,
        it stays closed."""
        if woke and not self._peer_port_gone:
            self._peer_port_gone = self._channel.status() is ChannelStatus.PEER_CLOSED
        return self._peer_port_gone

    # -- closing -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close this end: tell the peer, then release the pages, ports and advertisement.

        Idempotent; a cancelled ``aclose`` still releases everything. The peer can still read
        what was written before the close.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            self._notifier.close()  # waiting tasks get ClosedResourceError
            for scope in self._fd_waits:  # and so do tasks waiting on a descriptor
                scope.cancel()
            try:
                self._ring.set_live(Live.EXITED)
                self._channel.notify()
            except OSError:
                pass  # the peer is gone already; the release below still runs
        finally:
            try:
                self._endpoint.release()
            finally:
                if self._on_close is not None:
                    with trio.CancelScope(shield=True):
                        await self._on_close()  # brief: closes a connection at most
        await trio.lowlevel.checkpoint()
