"""Copy bytes both ways between a vchan and a local byte stream, and decide when to stop.

vchan has no half-close: a peer can only say "no more data" by closing the whole vchan. So a
bridge ends, as xencat does, when either direction ends:

- **the peer closes the vchan**: everything it sent is written to the local output first.
  The ending says whether the local input had begun but not ended by then (some of it may
  not have been delivered): for ``cat`` that is a failure, for a proxy just how it ended.
- **the local input ends** (end of file), once everything read from it is in the ring: the
  caller then closes the vchan, and the peer still reads all of it. With
  ``input_ends_session=False`` the bridge instead goes on receiving until the peer closes.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable

import attrs
import trio

from .._stream import VchanStream


class Ending(enum.Enum):
    """Why a bridge ended without error."""

    #: The peer closed; the local input had not begun, or had ended.
    PEER_CLOSED = "the peer closed the vchan"
    #: The peer closed after the local input had begun and before it ended.
    PEER_CLOSED_DURING_INPUT = "the peer closed the vchan before the end of the input"
    #: The local input ended and everything read from it is in the ring.
    INPUT_ENDED = "the local input ended"


class LocalError(Exception):
    """Reading or writing the local side failed; ``__cause__`` says how.

    Attributes:
        output_closed: writing failed because the reader went away (``EPIPE``,
            ``ECONNRESET``): ``| head`` had enough, or a socket client hung up.
    """

    def __init__(self, message: str, *, output_closed: bool = False) -> None:
        super().__init__(message)
        self.output_closed = output_closed


@attrs.define
class Transfer:
    """The bytes a bridge moved so far; ``observer`` is called after each change."""

    sent: int = 0
    received: int = 0
    observer: Callable[[Transfer], None] | None = None

    def add(self, *, sent: int = 0, received: int = 0) -> None:
        """Count bytes moved to the vchan (``sent``) and from it (``received``)."""
        self.sent += sent
        self.received += received
        if self.observer is not None:
            self.observer(self)


@attrs.frozen
class Local:
    """The local end of a bridge: standard input and output, or a socket.

    Attributes:
        input: what to send into the vchan; None when there is nothing to send.
        output: where to write what the vchan delivers.
        input_name, output_name: for messages (``"stdin"``, ``"the socket"``).
    """

    input: trio.abc.ReceiveStream | None
    output: trio.abc.SendStream
    input_name: str
    output_name: str


_PEER_GONE = (errno.EPIPE, errno.ECONNRESET)


def _fd_of(stream: object) -> int | None:
    """The descriptor under a local stream that is one (standard input and output, which
    FdStream has made non-blocking), for copies straight between it and the ring."""
    return stream.fileno() if isinstance(stream, trio.lowlevel.FdStream) else None


def _output_closed(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno in _PEER_GONE


async def bridge(
    vchan: trio.abc.Stream,
    local: Local,
    *,
    chunk_size: int,
    transfer: Transfer,
    input_ends_session: bool = True,
) -> Ending:
    """Copy ``local.input`` to ``vchan`` and ``vchan`` to ``local.output`` until one ends.

    Neither stream is closed here: the caller's ``async with`` blocks close them.

    Args:
        chunk_size: the most bytes read at once from ``vchan`` or a local stream (descriptors
            are copied in the vchan's own steps, a quarter of its ring at a time).
        transfer: counts the bytes moved.
        input_ends_session: whether the end of ``local.input`` ends the bridge (else it
            goes on until the peer closes).

    Raises:
        trio.BrokenResourceError: the vchan broke (the protocol or the platform failed).
        LocalError: reading the input or writing the output failed.
    """
    run = _Bridge(vchan, local, chunk_size, transfer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.incoming, nursery.cancel_scope)
        if local.input is not None:
            nursery.start_soon(run.outgoing, local.input, nursery.cancel_scope, input_ends_session)
    return run.result()


class _Bridge:
    """The two copying tasks; each records how it ended, so no exception group escapes."""

    def __init__(
        self, vchan: trio.abc.Stream, local: Local, chunk_size: int, transfer: Transfer
    ) -> None:
        self._vchan = vchan
        self._local = local
        self._chunk_size = chunk_size
        self._transfer = transfer
        self._input_started = False  # the input has supplied data
        self._input_ended = False
        self._ending: Ending | None = None
        self._error: Exception | None = None

    def result(self) -> Ending:
        if self._error is not None:
            raise self._error
        assert self._ending is not None, "a bridge ended without a reason"
        return self._ending

    def _finish(
        self, scope: trio.CancelScope, ending: Ending | None, error: Exception | None
    ) -> None:
        if self._ending is None and self._error is None:
            self._ending, self._error = ending, error
        scope.cancel()

    async def incoming(self, scope: trio.CancelScope) -> None:
        try:
            output = _fd_of(self._local.output)
            if isinstance(self._vchan, VchanStream) and output is not None:
                # straight from the ring to the descriptor: no buffer in between
                while count := await self._receive_to(self._vchan, output):
                    self._transfer.add(received=count)
            else:
                while data := await self._vchan.receive_some(self._chunk_size):
                    await self._write_local(data)
                    self._transfer.add(received=len(data))
        except (trio.BrokenResourceError, LocalError) as exc:
            self._finish(scope, None, exc)
        else:
            during_input = self._input_started and not self._input_ended
            self._finish(
                scope, Ending.PEER_CLOSED_DURING_INPUT if during_input else Ending.PEER_CLOSED, None
            )

    async def outgoing(
        self, source: trio.abc.ReceiveStream, scope: trio.CancelScope, ends_session: bool
    ) -> None:
        try:
            fd = _fd_of(source)
            if isinstance(self._vchan, VchanStream) and fd is not None:
                # straight from the descriptor into the ring
                while count := await self._send_from(self._vchan, fd):
                    self._input_started = True
                    self._transfer.add(sent=count)
            else:
                while data := await self._read_local(source):
                    self._input_started = True
                    await self._vchan.send_all(data)
                    self._transfer.add(sent=len(data))
        except LocalError as exc:
            self._finish(scope, None, exc)
        except trio.BrokenResourceError as exc:
            # Without a cause, the peer closed (VchanStream's rule): incoming() delivers what
            # it sent before closing, then ends the bridge. With one, the vchan failed.
            if exc.__cause__ is not None:
                self._finish(scope, None, exc)
        else:
            self._input_ended = True
            if ends_session:
                self._finish(scope, Ending.INPUT_ENDED, None)

    async def _send_from(self, vchan: VchanStream, fd: int) -> int:
        try:
            return await vchan.send_from_fd(fd)
        except OSError as exc:
            raise LocalError(f"cannot read {self._local.input_name}") from exc

    async def _receive_to(self, vchan: VchanStream, fd: int) -> int:
        try:
            return await vchan.receive_to_fd(fd)
        except OSError as exc:
            raise LocalError(
                f"cannot write {self._local.output_name}", output_closed=exc.errno in _PEER_GONE
            ) from exc

    async def _read_local(self, source: trio.abc.ReceiveStream) -> bytes | bytearray:
        try:
            return await source.receive_some(self._chunk_size)
        except trio.BrokenResourceError as exc:
            raise LocalError(f"cannot read {self._local.input_name}") from exc.__cause__

    async def _write_local(self, data: bytes | bytearray) -> None:
        try:
            await self._local.output.send_all(data)
        except trio.BrokenResourceError as exc:
            raise LocalError(
                f"cannot write {self._local.output_name}", output_closed=_output_closed(exc)
            ) from exc.__cause__
