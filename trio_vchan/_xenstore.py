"""An async XenStore client over any :class:`trio.abc.Stream`.

Theory of operation
-------------------
The same stream carries replies to our requests and, interleaved, WATCH_EVENT messages that
arrive whenever a watched node changes. There is no background task: requests go out one at a
time under a lock, and whoever needs a message reads the stream. One task reads at a time (the
others park, as in ``_notify``); each message read is filed: an event into a queue that
:meth:`XenStoreClient.next_watch_event` drains, a reply into a slot its requester collects.

A request cancelled while waiting for its reply leaves that reply on the wire; its ``req_id``
is remembered and the reply is dropped when it arrives, so the next request stays in step. A
cancelled send leaves the stream in an unknown state, so the client is then broken.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar, final

import attrs
import trio

from ._errors import ProtocolError, XenStoreError
from ._xs_wire import (
    PAYLOAD_MAX,
    Message,
    MessageDecoder,
    MessageType,
    Permission,
    decode_error,
    join_strings,
    split_strings,
    validate_path,
)

if TYPE_CHECKING:
    from types import TracebackType

_T = TypeVar("_T")
_E = TypeVar("_E", bound=BaseException)

_RECEIVE_SIZE = 65536


@final
@attrs.frozen
class WatchEvent:
    """A watch fired: ``path`` changed (relative if the watch was registered relative)."""

    path: str
    token: str


@final
class XenStoreClient:
    """Speaks the XenStore protocol over ``stream``, which it owns from now on.

    Every request method raises :class:`~trio_vchan.XenStoreError` when the store replies with an
    error (``errno`` tells which), :class:`~trio_vchan.ProtocolError` when the store sends
    something malformed (the client is then broken for good),
    :class:`trio.BrokenResourceError` when the stream fails or the store hangs up, and
    :class:`trio.ClosedResourceError` after :meth:`aclose`. Paths that C xenstored would refuse
    raise :class:`ValueError` before anything is sent.

    ``tx`` selects a transaction (from :meth:`transaction_start`); 0 means none.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._decoder = MessageDecoder()
        self._request_lock = trio.Lock()
        self._next_req_id = 1
        self._awaiting: int | None = None
        self._replies: dict[int, Message] = {}
        self._abandoned: set[int] = set()
        self._events: deque[WatchEvent] = deque()
        self._reading = False
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._broken: BaseException | None = None

    async def __aenter__(self) -> XenStoreClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the stream; idempotent. Waiting tasks get :class:`trio.ClosedResourceError`."""
        self._closed = True
        self._lot.unpark_all()
        await self._stream.aclose()

    # -- the operations ------------------------------------------------------------------------

    async def read(self, path: str, *, tx: int = 0) -> bytes:
        """Return the value of the node at ``path``."""
        return (await self._path_request(MessageType.READ, path, tx)).payload

    async def write(self, path: str, value: bytes, *, tx: int = 0) -> None:
        """Set the value of ``path``, creating it and any missing parents."""
        validate_path(path)
        payload = path.encode() + b"\0" + bytes(value)
        await self._request(MessageType.WRITE, payload, tx, path)

    async def mkdir(self, path: str, *, tx: int = 0) -> None:
        """Create ``path`` with an empty value, unless it exists."""
        await self._path_request(MessageType.MKDIR, path, tx)

    async def rm(self, path: str, *, tx: int = 0) -> None:
        """Remove ``path`` and everything below it (fine if it is already gone)."""
        await self._path_request(MessageType.RM, path, tx)

    async def directory(self, path: str, *, tx: int = 0) -> list[str]:
        """Return the names of the children of ``path``."""
        try:
            reply = await self._path_request(MessageType.DIRECTORY, path, tx)
        except XenStoreError as exc:
            if exc.errno != errno.E2BIG:
                raise
            names = await self._directory_parts(path, tx)  # too many for one reply
        else:
            names = split_strings(reply.payload)
        return [name.decode() for name in names]

    async def _directory_parts(self, path: str, tx: int) -> list[bytes]:
        """Read a long child list in pieces with DIRECTORY_PART, as libxenstore does.

        Each reply is ``generation\0`` and names from byte ``offset`` on; an extra NUL ends the
        list. A changed generation means the list changed meanwhile: start again.
        """
        while True:
            names = bytearray()
            generation: bytes | None = None
            while True:
                payload = join_strings([path, str(len(names))])
                reply = await self._request(MessageType.DIRECTORY_PART, payload, tx, path)
                head, _, chunk = reply.payload.partition(b"\0")
                if generation is not None and head != generation:
                    break
                generation = head
                if chunk == b"\0" or chunk.endswith(b"\0\0"):
                    return split_strings(bytes(names + chunk[:-1]))
                if not chunk.endswith(b"\0"):
                    raise self._break(ProtocolError(f"bad DIRECTORY_PART reply {chunk[:64]!r}"))
                names += chunk

    async def get_perms(self, path: str, *, tx: int = 0) -> list[Permission]:
        """Return the permission list of ``path`` (owner first)."""
        reply = await self._path_request(MessageType.GET_PERMS, path, tx)
        try:
            return [Permission.parse(p) for p in split_strings(reply.payload)]
        except ValueError as exc:
            raise self._break(ProtocolError(f"bad GET_PERMS reply: {exc}")) from None

    async def set_perms(self, path: str, perms: Sequence[Permission], *, tx: int = 0) -> None:
        """Replace the permission list of ``path``; ``perms[0]`` names the owner.

        Raises:
            ValueError: ``perms`` is empty.
        """
        validate_path(path)
        if not perms:
            raise ValueError("perms must name at least the owner")
        payload = join_strings([path, *(p.format() for p in perms)])
        await self._request(MessageType.SET_PERMS, payload, tx, path)

    async def watch(self, path: str, token: str) -> None:
        """Watch ``path`` and everything below it; events carry ``token``.

        The store fires the watch once at once, so the first event may precede any change.
        """
        validate_path(path, allow_special=True)
        await self._request(MessageType.WATCH, join_strings([path, token]), 0, path)

    async def unwatch(self, path: str, token: str) -> None:
        """Remove the watch that ``path`` and ``token`` registered.

        Events it fired before may still be queued.
        """
        validate_path(path, allow_special=True)
        await self._request(MessageType.UNWATCH, join_strings([path, token]), 0, path)

    async def next_watch_event(self) -> WatchEvent:
        """Return the oldest watch event, waiting for one if none is queued."""
        return await self._receive_until(lambda: self._events.popleft() if self._events else None)

    async def transaction_start(self) -> int:
        """Start a transaction and return its id, for the ``tx`` argument of other calls."""
        reply = await self._request(MessageType.TRANSACTION_START, b"\0", 0, "")
        text = reply.payload.rstrip(b"\0")
        if not text.isdigit() or int(text) == 0 or int(text) >= 2**32:
            raise self._break(ProtocolError(f"bad transaction id {reply.payload!r}"))
        return int(text)

    async def transaction_end(self, tx: int, *, commit: bool) -> None:
        """Commit (``commit=True``) or abort transaction ``tx``.

        Raises:
            XenStoreError: ``EAGAIN`` if the commit conflicted with other changes: redo the
                whole transaction.
        """
        payload = b"T\0" if commit else b"F\0"
        await self._request(MessageType.TRANSACTION_END, payload, tx, str(tx))

    async def get_domain_path(self, domid: int) -> str:
        """Return the home directory of ``domid``, normally ``/local/domain/<domid>``."""
        reply = await self._request(
            MessageType.GET_DOMAIN_PATH, join_strings([str(domid)]), 0, str(domid)
        )
        return reply.payload.rstrip(b"\0").decode("ascii", "replace")

    # -- machinery ------------------------------------------------------------------------------

    async def _path_request(self, type: MessageType, path: str, tx: int) -> Message:
        validate_path(path)
        return await self._request(type, join_strings([path]), tx, path)

    async def _request(self, type: MessageType, payload: bytes, tx: int, what: str) -> Message:
        op = type.name
        if len(payload) > PAYLOAD_MAX:
            # As libxenstore: the store would drop a connection that sent this.
            raise XenStoreError(errno.E2BIG, f"{op} {what}")
        if not 0 <= tx < 2**32:
            raise ValueError(f"tx must be a transaction id or 0, not {tx!r}")
        async with self._request_lock:
            self._check_usable()
            req_id = self._next_req_id
            self._next_req_id = req_id % 0xFFFFFFFF + 1
            data = Message(type, req_id, tx, payload).encode()
            try:
                await self._stream.send_all(data)
            except trio.Cancelled:
                self._broken = trio.BrokenResourceError("a XenStore request was cancelled mid-send")
                raise
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._stream_failed(exc) from exc
            self._awaiting = req_id
            try:
                reply = await self._receive_until(lambda: self._replies.pop(req_id, None))
            except BaseException:
                if req_id not in self._replies and self._broken is None:
                    self._abandoned.add(req_id)
                self._replies.pop(req_id, None)
                raise
            finally:
                self._awaiting = None
        if reply.type == MessageType.ERROR:
            raise XenStoreError(decode_error(reply.payload), f"{op} {what}")
        if reply.type != type:
            raise self._break(ProtocolError(f"{op} got a reply of type {reply.type}"))
        return reply

    async def _receive_until(self, take: Callable[[], _T | None]) -> _T:
        # Trio's rule: every call that returns has passed a checkpoint.
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            result = take()
            if result is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return result
            self._check_usable()
            if self._reading:
                await self._lot.park()
                continue
            self._reading = True
            try:
                self._file(await self._receive_message())
            finally:
                self._reading = False
                self._lot.unpark_all()

    async def _receive_message(self) -> Message:
        while True:
            try:
                message = self._decoder.next_message()
            except ProtocolError as exc:
                raise self._break(exc) from None
            if message is not None:
                return message
            try:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._stream_failed(exc) from exc
            if not data:
                raise self._break(trio.BrokenResourceError("XenStore closed the connection"))
            self._decoder.feed(data)

    def _file(self, message: Message) -> None:
        if message.type == MessageType.WATCH_EVENT:
            parts = split_strings(message.payload)
            if len(parts) < 2:
                raise self._break(ProtocolError(f"bad watch event {message.payload!r}"))
            path, token = (p.decode("utf-8", "replace") for p in parts[:2])
            self._events.append(WatchEvent(path, token))
        elif message.req_id == self._awaiting:
            self._replies[message.req_id] = message
        elif message.req_id in self._abandoned:
            self._abandoned.discard(message.req_id)
        else:
            raise self._break(
                ProtocolError(f"reply to request {message.req_id}, which is not outstanding")
            )

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this XenStore client was already closed")
        if isinstance(self._broken, ProtocolError):
            raise ProtocolError(*self._broken.args) from self._broken
        if self._broken is not None:
            raise trio.BrokenResourceError("the XenStore connection is broken") from self._broken

    def _stream_failed(self, exc: BaseException) -> BaseException:
        if self._closed:
            return trio.ClosedResourceError("this XenStore client was already closed")
        return self._break(trio.BrokenResourceError(f"XenStore connection failed: {exc}"))

    def _break(self, exc: _E) -> _E:
        if self._broken is None:
            self._broken = exc
        return exc
