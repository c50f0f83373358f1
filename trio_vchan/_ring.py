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

import attrs

try:
    from . import _native
except ImportError:
    # Python found a trio_vchan without its compiled part: a source tree first on sys.path (a
    # script run from the clone's root), which says "partially initialized module ... circular
    # import". Say what it is; an .so that exists but fails to load keeps its own error.
    import importlib.util
    import os

    if importlib.util.find_spec(f"{__package__}._native") is not None:
        raise
    raise ImportError(
        f"trio_vchan's native part (trio_vchan._native) is not built in"
        f" {os.path.dirname(os.path.abspath(__file__))}: Python imported that source tree"
        " rather than an installed trio-vchan, because it comes first on sys.path (a script"
        " run from the clone's root, say). Install the package (`pip install .` in the clone)"
        " and run from outside the source tree, or build the native part into the source"
        " tree with `pip install -e .`."
    ) from None  # the original says "most likely due to a circular import": it is not
from ._errors import ProtocolError
from ._layout import (
    CLI_LIVE,
    CLI_NOTIFY,
    INDEX_MASK,
    LEFT_CONS,
    LEFT_PROD,
    MAX_RING_SIZE,
    PAGE_SIZE,
    RIGHT_CONS,
    RIGHT_PROD,
    SMALL_RING_SIZE,
    SRV_LIVE,
    SRV_NOTIFY,
    Live,
    NotifyBit,
    Role,
)

lib = _native.lib  # module attribute, so that tests can interpose on shared-memory accesses


# NamedTuples rather than attrs classes: these are built on every read and write (measured:
# half the construction cost).
class ReadResult(NamedTuple):
    data: bytes | bytearray
    notify_peer: bool  # the peer asked to hear when we consume: send it an event


class WriteResult(NamedTuple):
    accepted: int
    notify_peer: bool  # the peer asked to hear when we write: send it an event


_LIVE_VALUES = tuple(Live)
_NO_WRITE = WriteResult(0, notify_peer=False)
_NO_READ = ReadResult(b"", notify_peer=False)


@attrs.frozen
class _Offsets:
    """Where one role's indices, notify bytes and live bytes are in the page."""

    read_prod: int
    read_cons: int
    write_prod: int
    write_cons: int
    own_notify: int  # the peer requests here; we check and clear it
    peer_notify: int  # we request here; the peer checks and clears it
    own_live: int
    peer_live: int


_OFFSETS = {
    Role.SERVER: _Offsets(
        LEFT_PROD, LEFT_CONS, RIGHT_PROD, RIGHT_CONS, SRV_NOTIFY, CLI_NOTIFY, SRV_LIVE, CLI_LIVE
    ),
    Role.CLIENT: _Offsets(
        RIGHT_PROD, RIGHT_CONS, LEFT_PROD, LEFT_CONS, CLI_NOTIFY, SRV_NOTIFY, CLI_LIVE, SRV_LIVE
    ),
}


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
        self._read_ring = read_ring
        self._write_ring = write_ring
        self.read_size: int = _check_ring(read_ring, "read_ring")
        self.write_size: int = _check_ring(write_ring, "write_ring")
        if write_ring.readonly:
            raise ValueError("write_ring must be writable")
        self._at = _OFFSETS[role]
        self._page = _native.ffi.from_buffer("uint8_t[]", page, require_writable=True)
        self._write_ring_ptr = _native.ffi.from_buffer(
            "uint8_t[]", write_ring, require_writable=True
        )
        # Our own indices: read once here (the server may have written before we connected),
        # then only ever written.
        self._cons = lib.vchan_load_acquire_u32(self._page, self._at.read_cons)
        self._prod = lib.vchan_load_acquire_u32(self._page, self._at.write_prod)

    def release(self) -> None:
        """Drop every view of the shared memory, so that its owner can unmap it."""
        _native.ffi.release(self._page)
        _native.ffi.release(self._write_ring_ptr)
        self._read_ring.release()
        self._write_ring.release()

    # -- reading -------------------------------------------------------------------------------

    def _ready(self) -> int:
        prod = lib.vchan_load_acquire_u32(self._page, self._at.read_prod)
        ready = (prod - self._cons) & INDEX_MASK
        if ready > self.read_size:
            raise ProtocolError(f"producer is {ready} bytes ahead of a {self.read_size}-byte ring")
        return ready

    def data_ready(self) -> int:
        """Bytes waiting to be read (the peer's ``prod`` read once and checked)."""
        return self._ready()

    def read(self, max_bytes: int) -> ReadResult:
        """Consume up to ``max_bytes`` (at least 1) bytes; empty if nothing is there."""
        count = min(self._ready(), max_bytes)  # acquire load of prod: data reads come after it
        if count == 0:
            return _NO_READ
        start = self._cons & (self.read_size - 1)
        first = min(count, self.read_size - start)
        ring = self._read_ring
        if first == count:
            data: bytes | bytearray = bytes(ring[start : start + count])
        else:  # wraps around the end of the ring
            data = bytearray(count)
            data[:first] = ring[start:]
            data[first:] = ring[: count - first]
        self._cons = (self._cons + count) & INDEX_MASK
        # Full barrier, cons store, then the notify bit: see vchan_ring_consumed.
        notify = lib.vchan_ring_consumed(
            self._page, self._at.read_cons, self._cons, self._at.own_notify
        )
        return ReadResult(data, bool(notify))

    def request_data_notify(self) -> bool:
        """Ask the peer for an event when it writes; True if data arrived meanwhile."""
        lib.vchan_fetch_or_u8(self._page, self._at.peer_notify, NotifyBit.WRITE)
        # Full barrier (inside the seq-cst fetch-or too): post the request before re-reading prod.
        lib.vchan_full_barrier()
        return self._ready() > 0

    # -- writing -------------------------------------------------------------------------------

    def _space(self) -> int:
        cons = lib.vchan_load_acquire_u32(self._page, self._at.write_cons)
        used = (self._prod - cons) & INDEX_MASK
        if used > self.write_size:
            raise self._overrun(used)
        return self.write_size - used

    def _overrun(self, used: int) -> ProtocolError:
        return ProtocolError(
            f"producer is {used} bytes ahead of a {self.write_size}-byte ring"
            " (the peer moved our ring's consumer index backwards or past the producer)"
        )

    def buffer_space(self) -> int:
        """Bytes that can be written now (the peer's ``cons`` read once and checked)."""
        return self._space()

    def write(self, data: memoryview) -> WriteResult:
        """Copy as much of ``data`` (a byte-format memoryview) as fits into the ring."""
        if not data:
            return _NO_WRITE
        # One native call loads cons once, copies with wrap-around, publishes prod and takes
        # the notify bit, with libxenvchan's barriers (see build_native.py).
        with _native.ffi.from_buffer(data) as source:
            result = lib.vchan_ring_write(
                self._page,
                self._write_ring_ptr,
                self.write_size,
                self._prod,
                self._at.write_prod,
                self._at.write_cons,
                self._at.own_notify,
                source,
                len(data),
            )
        if result < 0:
            raise self._overrun(-1 - result)
        count = result >> 1
        self._prod = (self._prod + count) & INDEX_MASK
        return WriteResult(count, bool(result & 1))

    def request_space_notify(self) -> bool:
        """Ask the peer for an event when it consumes; True if space appeared meanwhile."""
        lib.vchan_fetch_or_u8(self._page, self._at.peer_notify, NotifyBit.READ)
        # Full barrier: post the request before re-reading cons.
        lib.vchan_full_barrier()
        return self._space() > 0

    # -- notifications and state ---------------------------------------------------------------

    def peer_live(self) -> Live:
        """The peer's live byte, read once.

        Raises:
            ProtocolError: a value that is not 0, 1 or 2 (2 only in the client's byte).
        """
        value = lib.vchan_load_u8(self._page, self._at.peer_live)
        if value > Live.WAITING or (value == Live.WAITING and self.role is Role.CLIENT):
            raise ProtocolError(f"the peer's live byte is {value}, not 0 or 1")
        return _LIVE_VALUES[value]

    def set_live(self, live: Live) -> None:
        """Store our own live byte (release: everything we wrote before is visible first)."""
        lib.vchan_store_u8(self._page, self._at.own_live, live)
