"""RingEndpoint: one side of a vchan as a sans-IO state machine over the shared memory.

Theory of operation
-------------------
The shared page holds two single-producer/single-consumer rings with free-running 32-bit
indices. Each side owns one index per ring (its ``prod`` on the ring it writes, its ``cons`` on
the ring it reads) and keeps a private copy of it: the peer may scribble on the page, but we never
read our own indices back, so a hostile peer cannot make us re-read or skip our own data.
The peer's indices are loaded once per decision (no double fetch, XSA-155) and checked:
``prod - cons`` larger than the ring means the peer broke the protocol, and we raise
:class:`ProtocolError` instead of copying (XSA-86) or hanging (libxenvchan's answer).

Wake-ups follow libxenvchan exactly, so a C peer and we never miss one another:

* A writer copies data, publishes ``prod`` (release), then, after a full barrier, atomically
  clears ``NotifyBit.WRITE`` in its *own* notify byte; if it was set, the peer asked to hear
  about new data and the caller must send an event. Readers do the same with ``READ``.
* A side about to wait sets the bit in the *peer's* notify byte (atomic fetch-or), issues a full
  barrier and reads the index again: data or space that arrived between the first check and the
  request would otherwise never be announced.

The core never blocks and never makes a system call; it returns "notify the peer" flags and
the stream sends the events. Any exception other than ProtocolError leaving it is a bug here.
"""

from __future__ import annotations

from typing import NamedTuple, final

from ._compiled import native as _native
from ._errors import ProtocolError
from ._layout import MAX_RING_SIZE, OFFSETS, PAGE_SIZE, SMALL_RING_SIZE, Live, NotifyBit, Role

# Module attributes, so that tests can run the same code over an instrumented build of the C
# steps (tests/test_interleavings.py); each RingEndpoint keeps the pair it was made with.
ffi = _native.ffi
lib = _native.lib


# NamedTuples rather than attrs classes: these are built on every read and write (measured:
# half the construction cost).
class ReadResult(NamedTuple):
    data: bytes | bytearray
    notify_peer: bool  # the peer asked to hear when we consume: send it an event
    peer_live: Live  # the peer's live byte, read before the ring


class ReadIntoResult(NamedTuple):
    nbytes: int
    notify_peer: bool
    peer_live: Live


class WriteResult(NamedTuple):
    accepted: int
    notify_peer: bool  # the peer asked to hear when we write: send it an event
    peer_live: Live  # the peer's live byte, read before writing; nothing is written past EXITED


_LIVE_VALUES = tuple(Live)
_new_tuple = tuple.__new__  # builds a NamedTuple without its Python-level __new__
_LIVE_FIELD = 0xFF  # bits 1..8 of a step's result
_NOTIFY_READ = int(NotifyBit.READ)  # set in our notify byte: the peer waits for room


def ring_step(size: int) -> int:
    """The most bytes one copy moves through a ring of ``size`` before publishing them: a
    quarter of the ring, so that both ends copy at once (copying a whole ring before publishing
    leaves each end waiting while the other copies)."""
    return size // 4


def _wrapped(ring: memoryview, index: int, count: int) -> list[memoryview]:
    """Views of ``count`` bytes of ``ring`` from free-running ``index`` on: two where they wrap
    around its end, none for 0."""
    start = index & (len(ring) - 1)
    first = min(count, len(ring) - start)
    views = [ring[start : start + first]] if count else []
    if count > first:
        views.append(ring[: count - first])
    return views


def _check_ring(ring: memoryview, what: str) -> int:
    size = len(ring)
    if not SMALL_RING_SIZE <= size <= MAX_RING_SIZE or size & (size - 1):
        raise ValueError(f"{what} must be a power of two from 1 KiB to 1 MiB, not {size} bytes")
    return size


@final
class RingEndpoint:
    """One side of a vchan. Never blocks and never makes a system call.

    Args:
        page: the 4096-byte shared page, writable.
        read_ring: the ring this side reads (a slice of the page, or mapped external pages).
        write_ring: the ring this side writes.
        role: which side this is; it decides which indices and notify bytes are ours.

    The caller validates the orders (:func:`trio_vchan._layout.read_orders`) and builds the ring
    views from them, so that the sizes here are private copies the peer cannot change.
    """

    def __init__(
        self, page: memoryview, read_ring: memoryview, write_ring: memoryview, role: Role
    ) -> None:
        if len(page) != PAGE_SIZE or page.readonly:
            raise ValueError(f"page must be a writable {PAGE_SIZE}-byte buffer")
        self.role = role
        self.read_size: int = _check_ring(read_ring, "read_ring")
        self.write_size: int = _check_ring(write_ring, "write_ring")
        if write_ring.readonly:
            raise ValueError("write_ring must be writable")
        self._ffi, self._lib = ffi, lib
        self._read_ring = read_ring
        self._write_ring = write_ring
        self._pointers = [
            ffi.from_buffer("uint8_t[]", view, require_writable=writable)
            for view, writable in ((page, True), (read_ring, False), (write_ring, True))
        ]
        at = OFFSETS[role]
        end = self._end = ffi.new("struct vchan_end *")
        end.page, end.read_ring, end.write_ring = self._pointers
        end.read_size, end.write_size = self.read_size, self.write_size
        end.read_prod, end.read_cons = at.read_prod, at.read_cons
        end.write_prod, end.write_cons = at.write_prod, at.write_cons
        end.own_notify, end.peer_notify = at.own_notify, at.peer_notify
        end.own_live, end.peer_live = at.own_live, at.peer_live
        # A client's live byte is WAITING until it connects; the server's never is.
        end.max_peer_live = Live.WAITING if role is Role.SERVER else Live.CONNECTED
        end.read_step, end.write_step = ring_step(self.read_size), ring_step(self.write_size)
        # Our own indices: read once here (the server may have written before we connected),
        # then only ever written.
        end.cons = lib.vchan_load_acquire_u32(self._pointers[0], at.read_cons)
        end.prod = lib.vchan_load_acquire_u32(self._pointers[0], at.write_prod)

    def release(self) -> None:
        """Drop every view of the shared memory, so that its owner can unmap it."""
        for pointer in self._pointers:
            self._ffi.release(pointer)
        self._read_ring.release()
        self._write_ring.release()

    # -- the results of the C steps ------------------------------------------------------------

    def _live(self, result: int) -> Live:
        value = (result >> 1) & _LIVE_FIELD
        if value == Live.CONNECTED:  # the common case, first
            return Live.CONNECTED
        if value > self._end.max_peer_live:
            raise ProtocolError(f"the peer's live byte is {value}, not 0 or 1")
        return _LIVE_VALUES[value]

    def _unpack_read(self, result: int) -> int:
        return self._checked_ready(result) >> 9

    def _unpack_write(self, result: int) -> int:
        return self._checked_space(result) >> 9

    def _checked_ready(self, ready: int) -> int:
        if ready < 0:
            raise ProtocolError(
                f"producer is {-1 - ready} bytes ahead of a {self.read_size}-byte ring"
            )
        return ready

    def _checked_space(self, space: int) -> int:
        if space < 0:
            raise ProtocolError(
                f"producer is {-1 - space} bytes ahead of a {self.write_size}-byte ring"
                " (the peer moved our ring's consumer index backwards or past the producer)"
            )
        return space

    # -- reading -------------------------------------------------------------------------------

    def data_ready(self) -> int:
        """Bytes waiting to be read (the peer's ``prod`` read once and checked)."""
        return self._unpack_read(self._lib.vchan_peek(self._end))

    def read(self, max_bytes: int, *, at_once: bool = False) -> ReadResult:
        """Consume up to ``max_bytes`` (at least 1) bytes into a new object; empty if none.

        While the peer waits for room, only a step of a large read is taken (the peer is told
        and refills while the caller takes the rest), unless ``at_once``.
        """
        result = self._lib.vchan_peek(self._end)
        count = min(self._unpack_read(result), max_bytes)
        live = self._live(result)
        if count == 0:
            return ReadResult(b"", False, live)
        step = self._end.read_step
        if step and count > step and not at_once and self._peer_waits_for_room():
            count = step  # taken at once, so that it refills while we take the rest
        size = self.read_size
        start = self._end.cons & (size - 1)
        ring = self._read_ring
        if start + count <= size:
            data: bytes | bytearray = bytes(ring[start : start + count])
        else:  # wraps around the end of the ring
            first = size - start
            data = bytearray(count)
            data[:first] = ring[start:]
            data[first:] = ring[: count - first]
        notify = self._lib.vchan_consume(self._end, count)  # barrier, cons, then the notify bit
        return _new_tuple(ReadResult, (data, bool(notify), live))

    def _peer_waits_for_room(self) -> bool:
        own_notify = self._end.own_notify
        return bool(self._lib.vchan_load_u8(self._pointers[0], own_notify) & _NOTIFY_READ)

    def read_into(self, buffer: memoryview) -> ReadIntoResult:
        """Consume up to ``len(buffer)`` bytes into ``buffer`` (writable, byte format); as
        :meth:`read`, only a step of a large read while the peer waits for room."""
        with self._ffi.from_buffer(buffer, require_writable=True) as target:
            result = self._lib.vchan_receive(self._end, target, len(buffer))
        count = self._unpack_read(result)
        return _new_tuple(ReadIntoResult, (count, bool(result & 1), self._live(result)))

    def readable(self) -> tuple[list[memoryview], Live]:
        """Views of the waiting data (two where it wraps), for a caller that copies it out
        itself (to a file, say) and then calls :meth:`consume` with how much it took.

        The peer must not change this data until it is consumed; a hostile one can, which
        changes only what we deliver, never where we read.
        """
        result = self._lib.vchan_peek(self._end)
        count = self._unpack_read(result)
        live = self._live(result)
        return _wrapped(self._read_ring, self._end.cons, count), live

    def consume(self, count: int) -> bool:
        """Publish that ``count`` bytes of :meth:`readable`'s views were taken; returns whether
        to notify the peer."""
        return bool(self._lib.vchan_consume(self._end, count))

    def request_data_notify(self) -> int:
        """Ask the peer for an event when it writes; returns the bytes waiting now (data that
        arrived meanwhile would not be announced)."""
        return self._checked_ready(self._lib.vchan_request_data(self._end))

    # -- writing -------------------------------------------------------------------------------

    def buffer_space(self) -> int:
        """Bytes that can be written now (the peer's ``cons`` read once and checked)."""
        return self._unpack_write(self._lib.vchan_space(self._end))

    def write(self, data: bytes | bytearray | memoryview, whole: bool = False) -> WriteResult:
        """Copy as much of ``data`` (bytes-like, byte format) as fits into the ring; with
        ``whole``, all of it or nothing. Nothing is written once the peer's byte says EXITED.
        Without ``whole``, a large write stops after the step that the peer waits for (it is
        to be told now, and the caller writes the rest).

        One C step loads the peer's live byte and ``cons`` once each, copies with wrap-around,
        publishes ``prod`` and takes the notify bit, with libxenvchan's barriers.
        """
        if type(data) is bytes:  # cffi passes a bytes object's own buffer as a char *
            result = self._lib.vchan_send(self._end, data, len(data), whole)
        else:
            with self._ffi.from_buffer(data) as source:
                result = self._lib.vchan_send(self._end, source, len(data), whole)
        accepted = self._unpack_write(result)
        return _new_tuple(WriteResult, (accepted, bool(result & 1), self._live(result)))

    def writable(self) -> tuple[list[memoryview], Live]:
        """Views of the free space (two where it wraps), for a caller that fills them itself
        (from a file, say) and then calls :meth:`commit` with how much it wrote."""
        result = self._lib.vchan_space(self._end)
        count = self._unpack_write(result)
        live = self._live(result)
        return _wrapped(self._write_ring, self._end.prod, count), live

    def commit(self, count: int) -> bool:
        """Publish ``count`` bytes written into :meth:`writable`'s views; returns whether to
        notify the peer."""
        return bool(self._lib.vchan_commit(self._end, count))

    def request_space_notify(self) -> int:
        """Ask the peer for an event when it consumes; returns the space free now."""
        return self._checked_space(self._lib.vchan_request_space(self._end))

    # -- state ---------------------------------------------------------------------------------

    def peer_live(self) -> Live:
        """The peer's live byte, read once.

        Raises:
            ProtocolError: a value that is not 0, 1 or 2 (2 only in the client's byte).
        """
        value = self._lib.vchan_load_u8(self._pointers[0], self._end.peer_live)
        return self._live(value << 1)

    def set_live(self, live: Live) -> None:
        """Store our own live byte (release: everything we wrote before is visible first)."""
        self._lib.vchan_store_u8(self._pointers[0], self._end.own_live, live)
