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
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar, final

import trio

from ._advertisement import PeerGoneError
from ._backend import ChannelStatus
from ._errors import ProtocolError
from ._layout import Live, Role
from ._notify import Notifier

if TYPE_CHECKING:
    from ._handshake import Endpoint

_T = TypeVar("_T")
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
        """Run a core or backend operation; a protocol or OS error breaks the stream."""
        self._check_status()
        try:
            return operation(*args, **kwargs)
        except (ProtocolError, OSError) as exc:
            raise self._break(exc) from exc

    def _break(self, exc: ProtocolError | OSError) -> trio.BrokenResourceError:
        self._broken = exc
        what = "broke the vchan protocol" if isinstance(exc, ProtocolError) else "failed"
        return trio.BrokenResourceError(f"the vchan {what}: {exc}")

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
        return self._guard(self._ring.data_ready)

    @property
    def buffer_space(self) -> int:
        """Bytes that can be written into the ring now without waiting."""
        return self._guard(self._ring.buffer_space)

    # -- receiving -----------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Wait until data is there, then return up to ``max_bytes`` of it.

        Returns ``b""`` at end of stream: the peer closed and everything it wrote before was
        received.

        Raises:
            trio.BusyResourceError: another task is receiving.
            trio.ClosedResourceError: this stream was closed (before or during the call).
            trio.BrokenResourceError: the peer broke the protocol or the platform failed.
        """
        with self._receive_conflict:
            limit = _check_max_bytes(max_bytes)
            await trio.lowlevel.checkpoint_if_cancelled()
            blocked = woke = False
            while True:
                token = self._notifier.token()  # before looking: no lost wake-ups
                data = self._try_receive(limit)
                if data is None and self._peer_port_closed(woke):
                    self._at_end = True  # gone without a word: as if it had exited
                    data = b""
                if data is not None:
                    if not blocked:  # a wait that blocked was this call's checkpoint already
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                woke = await self._wait_for(
                    token, self._ring.data_ready, self._ring.request_data_notify
                )
                blocked |= woke

    def _try_receive(self, limit: int) -> bytes | bytearray | None:
        """One look at the ring: data, ``b""`` at end of stream, or None for "nothing yet"."""
        self._check_status()
        if self._at_end:  # end of stream is final, whatever the peer writes afterwards
            return b""
        ring = self._ring
        try:
            exited = ring.peer_live() is Live.EXITED  # read before the ring
            data, notify_peer = ring.read(limit)
            if notify_peer:
                self._channel.notify()
        except (ProtocolError, OSError) as exc:
            raise self._break(exc) from exc
        if data:
            return data
        if exited:
            self._at_end = True
            return b""
        if self._peer_gone is not None:
            raise trio.BrokenResourceError(str(self._peer_gone)) from self._peer_gone
        return None

    # -- sending -------------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``, waiting for ring space as often as needed.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: this stream was closed (before or during the call).
            trio.BrokenResourceError: the peer closed the vchan or broke the protocol.
        """
        with self._send_conflict:
            await trio.lowlevel.checkpoint_if_cancelled()
            blocked = False
            with memoryview(data) as source:
                remaining = source if source.format == "B" else source.cast("B")
                self._check_status()
                woke = False
                while remaining:
                    token = self._notifier.token()
                    accepted = self._try_send(remaining)
                    if accepted == len(remaining):
                        break
                    if accepted:
                        remaining = remaining[accepted:]
                        woke = False
                        continue
                    if self._peer_port_closed(woke):
                        raise trio.BrokenResourceError("peer closed the vchan (its port is gone)")
                    woke = await self._wait_for(
                        token, self._ring.buffer_space, self._ring.request_space_notify
                    )
                    blocked |= woke
                remaining.release()
            if not blocked:  # a wait that blocked was this call's checkpoint already
                await trio.lowlevel.cancel_shielded_checkpoint()

    def _try_send(self, data: memoryview) -> int:
        """Write what fits now; returns how much that was."""
        self._check_status()
        ring = self._ring
        if self._peer_gone is not None:
            raise trio.BrokenResourceError(str(self._peer_gone)) from self._peer_gone
        try:
            if ring.peer_live() is Live.EXITED:
                raise trio.BrokenResourceError("peer closed the vchan")
            accepted, notify_peer = ring.write(data)
            if notify_peer:
                self._channel.notify()
        except (ProtocolError, OSError) as exc:
            raise self._break(exc) from exc
        return accepted

    async def _wait_for(
        self, token: int, available: Callable[[], int], request_notify: Callable[[], bool]
    ) -> bool:
        """Spin for ``busy_poll`` seconds if asked to, else ask the peer for an event (which
        re-checks the ring) and sleep until one arrives. Returns whether the task blocked."""
        if self._busy_poll and self._guard(self._spin, available):
            return False
        if self._guard(request_notify):
            return False
        return await self._wait(token)

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
            self._peer_port_gone = self._guard(self._channel.status) is ChannelStatus.PEER_CLOSED
        return self._peer_port_gone

    def _spin(self, available: Callable[[], int]) -> bool:
        deadline = time.perf_counter() + self._busy_poll
        while time.perf_counter() < deadline:
            if available():
                return True
        return False

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
                if self._peer_port_closed(woke):
                    break
                woke = await self._wait_for(
                    token, self._ring.buffer_space, self._ring.request_space_notify
                )
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _wait(self, token: int) -> bool:
        try:
            return await self._notifier.wait(after=token)
        except trio.ClosedResourceError:
            raise trio.ClosedResourceError("this vchan was already closed") from None

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
