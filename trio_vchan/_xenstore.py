"""An async XenStore client over any :class:`trio.abc.Stream`.

Theory of operation
-------------------
The same stream carries replies to our requests and, interleaved, WATCH_EVENT messages that
arrive whenever a watched node changes. There is no background task: requests go out one at a
time under a lock, and whoever needs a message reads the stream. One task reads at a time (the
others park, as in ``_notify``); each message read is filed: a reply into a slot its requester
collects; an event for a :meth:`XenStoreClient.watching` context into its :class:`Changes`
(which only counts: "something changed, look again"), any other event into a queue that
:meth:`XenStoreClient.next_watch_event` drains. That queue holds at most
:data:`EVENT_QUEUE_MAX` events and drops the oldest beyond (as xenstored drops a slow
connection's events), so a flood of events cannot grow our memory.

A request cancelled while waiting for its reply leaves that reply on the wire; its ``req_id``
is remembered and the reply is dropped when it arrives, so the next request stays in step. A
cancelled send leaves the stream in an unknown state, so the client is then broken.
"""

from __future__ import annotations

import contextlib
import errno
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, TypeVar, final

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
    from collections.abc import AsyncIterator
    from types import TracebackType

_T = TypeVar("_T")
_E = TypeVar("_E", bound=BaseException)

_RECEIVE_SIZE = 65536
#: How long sending one request may take (the store is not reading): then the client breaks.
#: (Only a store that stops reading its socket makes a send wait; a cancel waits for it.)
SEND_TIMEOUT: Final = 1.0
#: Requests one client keeps out at once (see :meth:`XenStoreClient._make_room`).
OUTSTANDING_MAX: Final = 16
#: How long leaving :meth:`XenStoreClient.watching` waits for UNWATCH's reply.
UNWATCH_TIMEOUT: Final = 0.05
#: Unclaimed watch events kept for :meth:`XenStoreClient.next_watch_event`; older ones drop.
EVENT_QUEUE_MAX: Final = 1024
_CHANGES_TOKEN_PREFIX: Final = "trio-vchan/"
_ALONE: Final = frozenset({MessageType.WATCH, MessageType.UNWATCH})  # see _drain


@final
@attrs.frozen
class WatchEvent:
    """A watch fired: ``path`` changed (relative if the watch was registered relative)."""

    path: str
    token: str


@final
class Changes:
    """Counts the events of one :meth:`XenStoreClient.watching` context (they coalesce)."""

    def __init__(self, client: XenStoreClient) -> None:
        self._client = client
        self._seen = 0
        self.fired = 0  #: events filed so far, the registration event included

    def take(self) -> bool:
        """Whether an event fired since the last ``take`` (or since the watch was set, whose
        registration event counts); never waits."""
        if self.fired == self._seen:
            return False
        self._seen = self.fired
        return True

    async def wait(self) -> None:
        """Return once :meth:`take` would return True (and take it)."""
        await self._client.wait_for_changes(self)


@attrs.define(eq=False)
class _Watch:
    """One watch in the store, shared by every :meth:`XenStoreClient.watching` of its path."""

    token: str
    subscribers: set[Changes]
    registered: trio.Event = attrs.Factory(trio.Event)
    failed: bool = False


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
        # A file descriptor here is Linux's /dev/xen/xenbus (the daemon and the simulated
        # host are sockets), whose driver sends a request out of the buffer that the next
        # write fills: a second request before the first one's reply can rewrite it in
        # flight (seen on real Xen: a WRITE's value replaced by the next SET_PERMS's bytes).
        # So there, as libxenstore does, one request at a time.
        one_at_a_time = isinstance(stream, trio.lowlevel.FdStream)
        self._outstanding_max = 1 if one_at_a_time else OUTSTANDING_MAX
        self._decoder = MessageDecoder()
        self._request_lock = trio.Lock()
        self._next_req_id = 1
        self._outstanding: set[int] = set()  # sent, reply not yet filed
        self._replies: dict[int, Message] = {}
        self._abandoned: set[int] = set()
        self._events: deque[WatchEvent] = deque(maxlen=EVENT_QUEUE_MAX)
        self._changes: dict[str, _Watch] = {}  # by token
        self._watches: dict[str, _Watch] = {}  # by path
        self._leftover_watches: list[tuple[str, str]] = []  # UNWATCH not known to be sent
        self._next_token = 1
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

    async def read_together(self, paths: Sequence[str]) -> list[bytes | XenStoreError]:
        """Read every path as of one moment: in a transaction, committed (a commit that
        conflicts with a change meanwhile is redone), in two round trips.

        Returns each value, or the error reading it gave.
        """
        for path in paths:
            validate_path(path)
        while True:
            tx = await self.transaction_start()
            requests = [(MessageType.READ, join_strings([path]), tx, path) for path in paths]
            requests.append((MessageType.TRANSACTION_END, b"T\0", tx, str(tx)))
            *values, end = await self._requests(requests)
            if isinstance(end, XenStoreError):
                if end.errno == errno.EAGAIN:
                    continue  # something read changed meanwhile: read it again
                raise end
            return [v if isinstance(v, XenStoreError) else v.payload for v in values]

    async def write_many(
        self, entries: Sequence[tuple[str, bytes, Sequence[Permission]]], *, tx: int = 0
    ) -> None:
        """Write each ``(path, value, perms)`` then set its permissions, in this order, in one
        round trip (the store carries them out in order). Raises the first error."""
        requests = []
        for path, value, perms in entries:
            validate_path(path)
            if not perms:
                raise ValueError("perms must name at least the owner")
            requests.append((MessageType.WRITE, path.encode() + b"\0" + bytes(value), tx, path))
            payload = join_strings([path, *(p.format() for p in perms)])
            requests.append((MessageType.SET_PERMS, payload, tx, path))
        await self._batch(requests)

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

    async def has_children(self, path: str, *, tx: int = 0) -> bool:
        """Whether ``path`` has children: one request, however many there are."""
        try:
            reply = await self._path_request(MessageType.DIRECTORY, path, tx)
        except XenStoreError as exc:
            if exc.errno != errno.E2BIG:
                raise
            return True  # too many to list in one reply
        return bool(split_strings(reply.payload))

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

    @asynccontextmanager
    async def watching(self, path: str) -> AsyncIterator[Changes]:
        """Watch ``path`` under a token of our own for the duration of the block.

        Many tasks may watch through one client, and each gets its own :class:`Changes`;
        tasks watching the same path share one watch in the store (whose quota counts
        watches: 128 per domain in C xenstored). Leaving the block unwatches once the last
        task has left, briefly even when cancelled (the UNWATCH is sent at once; its reply is
        not waited for long).
        """
        validate_path(path, allow_special=True)
        changes = Changes(self)
        shared = await self._subscribe(path, changes)
        try:
            yield changes
        finally:
            await self._leave_watch(path, shared, changes)

    async def _subscribe(self, path: str, changes: Changes) -> _Watch:
        await self._unwatch_leftovers()  # a store's watch quota is small (C: 128 a domain)
        while True:
            shared = self._watches.get(path)
            if shared is None:
                token = f"{_CHANGES_TOKEN_PREFIX}{self._next_token}"
                self._next_token += 1
                shared = self._watches[path] = _Watch(token, {changes})
                self._changes[token] = shared
                try:
                    await self.watch(path, token)
                except BaseException:
                    shared.failed = True  # waiting subscribers try again themselves
                    shared.subscribers = {changes}
                    await self._leave_watch(path, shared, changes)
                    raise
                finally:
                    shared.registered.set()
                return shared
            changes.fired = 1  # already watched: its registration event counts for us too
            shared.subscribers.add(changes)
            try:
                await shared.registered.wait()
            except BaseException:
                await self._leave_watch(path, shared, changes)
                raise
            if not shared.failed:
                return shared
            shared.subscribers.discard(changes)  # its creator failed: try ourselves

    async def _leave_watch(self, path: str, shared: _Watch, changes: Changes) -> None:
        shared.subscribers.discard(changes)
        if shared.subscribers or shared.token not in self._changes:
            return
        del self._changes[shared.token]
        if self._watches.get(path) is shared:
            del self._watches[path]
        # A WATCH cancelled while awaiting its reply may still have taken effect: unwatch.
        if self.usable:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + UNWATCH_TIMEOUT
                with contextlib.suppress(XenStoreError, trio.BrokenResourceError):
                    await self.unwatch(path, shared.token)
            if scope.cancelled_caught:  # perhaps never sent: the next watch tries again
                self._leftover_watches.append((path, shared.token))

    async def _unwatch_leftovers(self) -> None:
        while self._leftover_watches:
            path, token = self._leftover_watches.pop()
            with contextlib.suppress(XenStoreError):  # ENOENT: it went after all
                await self.unwatch(path, token)

    async def wait_for_changes(self, *changes: Changes) -> None:
        """Wait until one of ``changes`` has an event; take the events of all of them."""

        def take() -> bool | None:
            return any([c.take() for c in changes]) or None

        await self._receive_until(take)

    @property
    def usable(self) -> bool:
        """Neither closed nor broken: requests can still be sent."""
        return not self._closed and self._broken is None

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
        (reply,) = await self._requests([(type, payload, tx, what)])
        if isinstance(reply, XenStoreError):
            raise reply
        return reply

    async def _requests(
        self, requests: Sequence[tuple[MessageType, bytes, int, str]]
    ) -> list[Message | XenStoreError]:
        """Send ``requests`` at once, then collect their replies in order.

        The store answers a connection's requests in order, so a batch takes one round trip
        and keeps its order; tasks sharing the client each wait only for their own replies.
        Returns each reply, or the XenStoreError it was.
        """
        for type, payload, tx, what in requests:
            if len(payload) > PAYLOAD_MAX:
                # As libxenstore: the store would drop a connection that sent this.
                raise XenStoreError(errno.E2BIG, f"{type.name} {what}")
            if not 0 <= tx < 2**32:
                raise ValueError(f"tx must be a transaction id or 0, not {tx!r}")
        if len(requests) > self._outstanding_max:  # one by one, then
            replies: list[Message | XenStoreError] = []
            for request in requests:
                replies += await self._requests([request])
            return replies
        async with self._request_lock:  # only the send is exclusive...
            self._check_usable()
            if any(type in _ALONE for type, _, _, _ in requests):
                await self._drain()
            else:
                await self._make_room(len(requests))
            req_ids = []
            messages = []
            for type, payload, tx, _ in requests:
                req_ids.append(self._next_req_id)
                self._next_req_id = self._next_req_id % 0xFFFFFFFF + 1
                messages.append(Message(type, req_ids[-1], tx, payload).encode())
            await trio.lowlevel.checkpoint_if_cancelled()  # a cancel before sending is clean
            self._outstanding.update(req_ids)  # before sending: a reply may be read at once
            # Half a message would leave the stream out of step: each send is shielded, for as
            # long as a store that reads its socket needs to take a message (the time counts
            # from each message: a write to /dev/xen/xenbus may itself take a while).
            for message in messages:  # one per write: /dev/xen/xenbus drops the rest
                with trio.CancelScope(shield=True) as sending:
                    sending.deadline = trio.current_time() + SEND_TIMEOUT
                    try:
                        await self._stream.send_all(message)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise self._stream_failed(exc) from exc
                if sending.cancelled_caught:
                    self._broken = trio.BrokenResourceError(
                        f"XenStore took no request for {SEND_TIMEOUT} s"
                    )
                    raise self._broken
        replies = []
        try:
            for req_id, (type, _, _, what) in zip(req_ids, requests, strict=True):
                replies.append(self._checked(type, what, await self._reply_to(req_id)))
        except BaseException:
            for req_id in req_ids[len(replies) :]:
                if req_id in self._outstanding and self._broken is None:
                    self._abandoned.add(req_id)  # its reply is still to come: drop it then
                self._outstanding.discard(req_id)
                self._replies.pop(req_id, None)
            raise
        return replies

    async def _drain(self) -> None:
        """Wait until no reply is outstanding (abandoned ones included).

        ...but Linux's xenbus device handles WATCH and UNWATCH synchronously, inside a lock
        that its delivery of replies to earlier requests also takes: one sent while a reply
        is outstanding hangs the device (and the domain's XenStore with it). libxenstore
        never has two requests out; we send those two only when nothing else is.
        """
        await self._receive_until(lambda: None if self._outstanding or self._abandoned else True)

    async def _make_room(self, count: int) -> None:
        """Wait until ``count`` more requests keep at most :data:`OUTSTANDING_MAX` out.

        A store holds the replies a client has not read yet: C xenstored stops reading a
        domain's requests at 20 outstanding, and drops a connection whose replies pile up, as
        the simulated one does at 1024. A thousand listeners sharing one connection would.
        (On /dev/xen/xenbus the bound is 1: see ``__init__``.)
        """

        def room() -> bool | None:
            out = len(self._outstanding) + len(self._abandoned)
            return True if out + count <= self._outstanding_max or not out else None

        if room() is None:  # (the common case waits for nothing: no checkpoint)
            await self._receive_until(room)

    async def _reply_to(self, req_id: int) -> Message:
        reply = await self._receive_until(lambda: self._replies.pop(req_id, None))
        self._outstanding.discard(req_id)
        return reply

    def _checked(self, type: MessageType, what: str, reply: Message) -> Message | XenStoreError:
        if reply.type == MessageType.ERROR:
            return XenStoreError(decode_error(reply.payload), f"{type.name} {what}")
        if reply.type != type:
            raise self._break(ProtocolError(f"{type.name} got a reply of type {reply.type}"))
        return reply

    async def _batch(self, requests: Sequence[tuple[MessageType, bytes, int, str]]) -> None:
        for reply in await self._requests(requests):
            if isinstance(reply, XenStoreError):
                raise reply

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
            shared = self._changes.get(token)
            if shared is not None:
                for changes in shared.subscribers:
                    changes.fired += 1
            elif not token.startswith(_CHANGES_TOKEN_PREFIX):  # else: of a watch just left
                self._events.append(WatchEvent(path, token))
        elif message.req_id in self._outstanding:
            self._outstanding.discard(message.req_id)
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
