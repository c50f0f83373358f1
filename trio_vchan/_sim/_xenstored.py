"""An in-memory XenStore that speaks the real wire protocol, for the simulated host.

Theory of operation
-------------------
The store is a dict from absolute path to an immutable :class:`_Node` (value, permissions,
children in creation order, generation). Every request is handled synchronously, start to
finish, between two awaits, so no locking is needed: trio runs one task at a time.

Each connection has a reader (:meth:`XenStoreServer._receive_loop`) that decodes requests and
handles them, and a writer (``_send_loop``) that drains a bounded outbox. Replies and watch
events, including events for *other* connections, go through the outboxes, so a request never
waits on a slow peer; a peer that lets its outbox fill up is disconnected (as C xenstored
drops a connection whose output quota is exhausted).

A transaction works on a shallow copy of the node dict taken when it starts. It remembers the
generation every node it touched had at that time; the commit fails with ``EAGAIN`` if any of
them changed since, and otherwise copies the nodes it modified into the store and fires the
watch events it queued. This is stricter than C xenstored (which only checks nodes it read),
but the same for every client that retries on ``EAGAIN``.

Behaviours follow C xenstored (``tools/xenstored/core.c``, ``watch.c``, ``transaction.c``) as
read for this module; differences are listed in ``docs/sim-xenstore.md``.
"""

from __future__ import annotations

import collections
import enum
import errno
from collections.abc import Callable
from typing import Final, final

import attrs
import trio

from .._backend import check_domid
from .._errors import ProtocolError
from .._xs_wire import (
    PAYLOAD_MAX,
    Access,
    Message,
    MessageDecoder,
    MessageType,
    Permission,
    count_strings,
    domain_path,
    encode_error,
    encode_ok,
    is_relative,
    join_strings,
    one_arg,
    split_strings,
    validate_path,
)

#: Quotas for unprivileged domains, as C xenstored's defaults.
NODES_PER_DOMAIN: Final = 1000
WATCHES_PER_CONNECTION: Final = 128
TRANSACTIONS_PER_CONNECTION: Final = 10
PERMS_PER_NODE: Final = 5
VALUE_MAX: Final = 2048
#: Replies and events queued for a connection before it is considered stuck and dropped.
OUTBOX_MAX: Final = 1024

_RECEIVE_SIZE: Final = 65536
_ROOT_PERMS: Final = (Permission(Access.NONE, 0),)
#: Who may see @introduceDomain/@releaseDomain events (C's default for special nodes).
_SPECIAL_PERMS: Final = (Permission(Access.NONE, 0),)

# Operations only dom0 may use; answered ENOSYS for dom0 unless implemented.
_PRIVILEGED_OPS: Final = frozenset(
    {
        MessageType.CONTROL,
        MessageType.INTRODUCE,
        MessageType.RELEASE,
        MessageType.IS_DOMAIN_INTRODUCED,
        MessageType.RESUME,
        MessageType.SET_TARGET,
        MessageType.SET_FEATURE,
        MessageType.GET_QUOTA,
        MessageType.SET_QUOTA,
    }
)
# Operations that ignore the header's tx_id.
_NO_TX_OPS: Final = frozenset({MessageType.WATCH, MessageType.UNWATCH})


class _Perm(enum.IntFlag):
    NONE = 0
    READ = 1
    WRITE = 2
    OWNER = 4
    ALL = READ | WRITE | OWNER


_ACCESS_FLAGS: Final = {
    Access.NONE: _Perm.NONE,
    Access.READ: _Perm.READ,
    Access.WRITE: _Perm.WRITE,
    Access.BOTH: _Perm.READ | _Perm.WRITE,
}

_Perms = tuple[Permission, ...]


def _perm_for(domid: int, perms: _Perms) -> _Perm:
    """What ``domid`` may do to a node with ``perms`` (C's ``perm_for_conn``)."""
    if domid == 0 or perms[0].domid == domid:
        return _Perm.ALL
    for p in perms[1:]:
        if p.domid == domid:
            return _ACCESS_FLAGS[p.access]
    return _ACCESS_FLAGS[perms[0].access]


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


def _child(path: str, name: str) -> str:
    return f"/{name}" if path == "/" else f"{path}/{name}"


def _is_below(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or inside it."""
    if top == "/":
        return path.startswith("/")
    return path == top or path.startswith(top + "/")


@attrs.frozen
class _Node:
    value: bytes
    perms: _Perms
    children: tuple[str, ...] = ()
    generation: int = 0


@attrs.frozen
class _Event:
    """A change to announce: who may see it is decided per watcher when it fires."""

    path: str
    exact: bool  # only watches on exactly this path (for nodes removed below an RM's root)
    perm_lists: tuple[_Perms, ...]  # a watcher that may read under any of these sees it


@attrs.define(eq=False)
class _Watch:
    path: str  # absolute or special
    token: bytes
    prefix_len: int  # stripped from event paths of relative watches


@attrs.define(eq=False)
class _Transaction:
    id: int
    nodes: dict[str, _Node]
    seen: dict[str, int | None] = attrs.Factory(dict)  # generation at start, None: absent
    modified: set[str] = attrs.Factory(set)
    events: list[_Event] = attrs.Factory(list)


@attrs.define(eq=False)
class _Connection:
    domid: int
    outbox: trio.MemorySendChannel[bytes]
    cancel_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    watches: list[_Watch] = attrs.Factory(list)
    transactions: dict[int, _Transaction] = attrs.Factory(dict)
    next_tx_id: int = 1

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    @property
    def home(self) -> str:
        return domain_path(self.domid)

    def send(self, data: bytes) -> None:
        try:
            self.outbox.send_nowait(data)
        except trio.WouldBlock:
            self.cancel_scope.cancel()  # not reading what we send: drop it
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # already going away


class _Failure(Exception):
    """Ends a request with an ERROR reply."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.errno = value


@attrs.define(eq=False)
class _Request:
    conn: _Connection
    tx: _Transaction | None
    payload: bytes


@final
class _View:
    """The store as one request sees it: the global nodes, or a transaction's copy."""

    def __init__(self, server: XenStoreServer, tx: _Transaction | None) -> None:
        self._server = server
        self._tx = tx
        self._nodes = tx.nodes if tx is not None else server._nodes

    def _note(self, path: str) -> None:
        if self._tx is not None and path not in self._tx.seen:
            node = self._tx.nodes.get(path)
            self._tx.seen[path] = None if node is None else node.generation

    def get(self, path: str) -> _Node | None:
        self._note(path)
        return self._nodes.get(path)

    def put(self, path: str, node: _Node) -> None:
        self._note(path)
        if self._tx is None:
            node = attrs.evolve(node, generation=self._server._next_generation())
        else:
            self._tx.modified.add(path)
        self._nodes[path] = node

    def delete(self, path: str) -> None:
        self._note(path)
        if self._tx is not None:
            self._tx.modified.add(path)
        del self._nodes[path]

    def owned_by(self, domid: int) -> int:
        return sum(1 for node in self._nodes.values() if node.perms[0].domid == domid)

    def emit(
        self, path: str, node: _Node, *, exact: bool = False, old_perms: _Perms | None = None
    ) -> None:
        """Announce a change to ``node`` at ``path``, now or when the transaction commits.

        As C's ``watch_permitted``: watchers that may read the node, its parent, or (for a
        permission change) the node as it was, see the event.
        """
        perm_lists = [node.perms]
        parent = self._nodes.get(_parent(path))
        if parent is not None:
            perm_lists.append(parent.perms)
        if old_perms is not None:
            perm_lists.append(old_perms)
        event = _Event(path, exact, tuple(perm_lists))
        if self._tx is not None:
            self._tx.events.append(event)
        else:
            self._server._fire(event)


@final
class XenStoreServer:
    """An in-memory XenStore for the simulated host, one store for all its domains.

    Dom0 is always present. Serve each client connection with :meth:`handle_connection`.

    Attributes:
        requests: how many requests the store received, by (the connection's domid, the
            operation's name, such as ``"READ"`` or ``"TRANSACTION_START"``; an unknown type
            code is named by its decimal number). Every request read from a connection counts,
            whether it succeeds or not, as soon as it is decoded. Clear it or replace it at will.
    """

    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[int, str]] = collections.Counter()
        self._generation = 0
        self._nodes: dict[str, _Node] = {"/": _Node(b"", _ROOT_PERMS)}
        self._domains: set[int] = set()
        self._connections: list[_Connection] = []
        self._outgoing: list[tuple[_Connection, bytes]] = []
        self._handlers: dict[MessageType, Callable[[_Request], bytes]] = {
            MessageType.READ: self._read,
            MessageType.WRITE: self._write,
            MessageType.MKDIR: self._mkdir,
            MessageType.RM: self._rm,
            MessageType.DIRECTORY: self._directory,
            MessageType.DIRECTORY_PART: self._directory_part,
            MessageType.GET_PERMS: self._get_perms,
            MessageType.SET_PERMS: self._set_perms,
            MessageType.WATCH: self._watch,
            MessageType.UNWATCH: self._unwatch,
            MessageType.RESET_WATCHES: self._reset_watches,
            MessageType.TRANSACTION_START: self._transaction_start,
            MessageType.TRANSACTION_END: self._transaction_end,
            MessageType.GET_DOMAIN_PATH: self._get_domain_path,
            MessageType.IS_DOMAIN_INTRODUCED: self._is_domain_introduced,
        }
        self.add_domain(0)

    # -- the host's interface --------------------------------------------------------------------

    def add_domain(self, domid: int) -> None:
        """Introduce ``domid`` as Xen's toolstack (libxl) does; a no-op if it is present.

        Creates ``/local/domain/<domid>`` owned by dom0 and readable by the domain (``n0``,
        ``r<domid>``), its ``domid`` key (the same permissions), and ``data``, owned by the
        domain (``n<domid>``) so that it may write there. Fires ``@introduceDomain``.

        Raises:
            TypeError, ValueError: ``domid`` is not a valid domain id.
        """
        check_domid(domid)
        if domid in self._domains:
            return
        self._domains.add(domid)
        view = _View(self, None)
        home = domain_path(domid)
        dom_perms: _Perms = (Permission(Access.NONE, 0), Permission(Access.READ, domid))
        if domid == 0:
            dom_perms = _ROOT_PERMS
        for path, value, perms in (
            (home, b"", dom_perms),
            (f"{home}/domid", str(domid).encode(), dom_perms),
            (f"{home}/data", b"", (Permission(Access.NONE, domid),)),
        ):
            self._create(view, path, value, perms)
        self._fire(_Event("@introduceDomain", False, (_SPECIAL_PERMS,)))
        self._flush()

    def remove_domain(self, domid: int) -> None:
        """Remove ``/local/domain/<domid>`` and fire ``@releaseDomain``, as after a domain dies.

        Raises:
            ValueError: ``domid`` is dom0 or was not added.
        """
        if domid == 0 or domid not in self._domains:
            raise ValueError(f"domain {domid!r} is not a removable domain of this store")
        self._domains.discard(domid)
        view = _View(self, None)
        home = domain_path(domid)
        if view.get(home) is not None:
            self._remove_subtree(view, home)
        self._fire(_Event("@releaseDomain", False, (_SPECIAL_PERMS,)))
        self._flush()

    def disconnect_domain(self, domid: int) -> None:
        """Drop every connection of ``domid`` now, as C xenstored drops a released domain's.

        Their watches and transactions end at once, so no event is queued for them from now on
        and no further request of theirs is read; :meth:`handle_connection` then closes each
        stream when its task next runs (the client sees the connection end). Connections
        served later as ``domid`` are not affected.
        """
        for conn in self._connections:
            if conn.domid == domid:
                conn.watches.clear()
                conn.transactions.clear()
                conn.cancel_scope.cancel()

    def paths(self) -> list[str]:
        """Every node's path, sorted (for leak checks)."""
        return sorted(self._nodes)

    async def handle_connection(self, stream: trio.abc.Stream, domid: int) -> None:
        """Serve one client, as domain ``domid``, until it hangs up; then close ``stream``.

        The client's watches and open transactions end with the connection. Never raises for
        anything the client does: a broken stream or a payload over 4096 bytes just ends the
        connection.
        """
        check_domid(domid)
        send_channel, receive_channel = trio.open_memory_channel[bytes](OUTBOX_MAX)
        conn = _Connection(domid, send_channel)
        self._connections.append(conn)
        try:
            with conn.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop, conn, stream, receive_channel)
                    await self._receive_loop(conn, stream)
                    nursery.cancel_scope.cancel()
        finally:
            self._connections.remove(conn)
            conn.watches.clear()
            conn.transactions.clear()
            send_channel.close()
            receive_channel.close()
            await trio.aclose_forcefully(stream)

    # -- connection plumbing ---------------------------------------------------------------------

    async def _receive_loop(self, conn: _Connection, stream: trio.abc.Stream) -> None:
        decoder = MessageDecoder()
        while True:
            try:
                data = await stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            decoder.feed(data)
            while True:
                try:
                    request = decoder.next_message()
                except ProtocolError:
                    return  # payload over the limit: C xenstored drops the connection
                if request is None:
                    break
                conn.send(self._process(conn, request).encode())
                self._flush()

    @staticmethod
    async def _send_loop(
        conn: _Connection, stream: trio.abc.Stream, outbox: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        try:
            async for data in outbox:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.cancel_scope.cancel()

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        for conn, data in outgoing:
            conn.send(data)

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def _fire(self, event: _Event) -> None:
        """Queue watch events for ``event`` (sent after the current reply, by ``_flush``)."""
        for conn in self._connections:
            if not any(_perm_for(conn.domid, perms) & _Perm.READ for perms in event.perm_lists):
                continue
            for watch in conn.watches:
                hit = event.path == watch.path
                if not event.exact:
                    hit = hit or _is_below(event.path, watch.path)
                if hit:
                    payload = join_strings([event.path[watch.prefix_len :], watch.token])
                    if len(payload) <= PAYLOAD_MAX:  # C drops over-long events too
                        self._outgoing.append(
                            (conn, Message(MessageType.WATCH_EVENT, 0, 0, payload).encode())
                        )

    def _process(self, conn: _Connection, request: Message) -> Message:
        """Count and handle one request, and return its reply."""
        try:
            name = MessageType(request.type).name
        except ValueError:
            name = str(request.type)
        self.requests[conn.domid, name] += 1
        try:
            payload = self._dispatch(conn, request)
        except _Failure as failure:
            return Message(
                MessageType.ERROR, request.req_id, request.tx_id, encode_error(failure.errno)
            )
        return Message(request.type, request.req_id, request.tx_id, payload)

    def _dispatch(self, conn: _Connection, request: Message) -> bytes:
        try:
            op = MessageType(request.type)
        except ValueError:
            op = MessageType.INVALID
        if op in _PRIVILEGED_OPS and not conn.privileged:
            raise _Failure(errno.EACCES)
        handler = self._handlers.get(op)
        if handler is None:
            raise _Failure(errno.ENOSYS)
        tx = None
        if op not in _NO_TX_OPS and request.tx_id != 0:
            tx = conn.transactions.get(request.tx_id)
            if tx is None:
                raise _Failure(errno.ENOENT)
        payload = handler(_Request(conn, tx, request.payload))
        if len(payload) > PAYLOAD_MAX:
            raise _Failure(errno.E2BIG)
        return payload

    # -- helpers shared by the operations ----------------------------------------------------------

    @staticmethod
    def _decode_path(conn: _Connection, raw: bytes, *, allow_special: bool = False) -> str:
        """Validate a path from the wire and make it absolute; EINVAL if it is not allowed."""
        try:
            path = raw.decode("ascii")
            validate_path(path, allow_special=allow_special)
        except ValueError:
            raise _Failure(errno.EINVAL) from None
        return f"{conn.home}/{path}" if is_relative(path) else path

    def _one_path(self, request: _Request) -> str:
        try:
            raw = one_arg(request.payload)
        except ValueError:
            raise _Failure(errno.EINVAL) from None
        return self._decode_path(request.conn, raw)

    @staticmethod
    def _check(view: _View, conn: _Connection, path: str, need: _Perm) -> _Node | None:
        """Return the node at ``path`` if ``conn`` may ``need`` it, ``None`` if it is missing.

        As C's ``get_node_chk_perm``: a missing node reports ENOENT only to those with the
        same access to its nearest existing ancestor; the others, and those denied access to an
        existing node, get EACCES, so that permissions hide what exists.
        """
        node = view.get(path)
        if node is not None:
            if _perm_for(conn.domid, node.perms) & need == need:
                return node
            raise _Failure(errno.EACCES)
        ancestor = _parent(path)
        above = view.get(ancestor)
        while above is None:  # ends at the root, which always exists
            ancestor = _parent(ancestor)
            above = view.get(ancestor)
        if not _perm_for(conn.domid, above.perms) & need:
            raise _Failure(errno.EACCES)
        return None

    def _create(
        self, view: _View, path: str, value: bytes, perms: _Perms | None = None, owner: int = 0
    ) -> _Node:
        """Create ``path`` and its missing parents; return the new node (watches not fired).

        New nodes inherit their parent's permissions, with ``owner`` (an unprivileged writer)
        as the owner; ``perms`` overrides that for the node itself.
        """
        missing = [path]
        parent = view.get(_parent(path))
        while parent is None:  # ends at the root, which always exists
            missing.append(_parent(missing[-1]))
            parent = view.get(_parent(missing[-1]))
        if owner != 0 and view.owned_by(owner) + len(missing) > NODES_PER_DOMAIN:
            raise _Failure(errno.ENOSPC)
        for name in reversed(missing):
            view.put(
                _parent(name), attrs.evolve(parent, children=(*parent.children, _basename(name)))
            )
            inherited = parent.perms
            if owner != 0:
                inherited = (Permission(inherited[0].access, owner), *inherited[1:])
            parent = _Node(b"", inherited)
            view.put(name, parent)
        node = attrs.evolve(parent, value=value, perms=perms or parent.perms)
        view.put(path, node)
        return node

    def _remove_subtree(self, view: _View, path: str) -> None:
        """Remove ``path`` and all below it, firing each removed node's watches.

        Iterative, as a hostile domain can nest nodes ~1500 deep.
        """
        order: list[str] = []
        stack = [path]
        while stack:
            current = stack.pop()
            order.append(current)
            node = view.get(current)
            if node is not None:
                stack.extend(_child(current, name) for name in node.children)
        for current in reversed(order):  # children before their parents, as C's walk
            node = view.get(current)
            if node is not None:
                view.emit(current, node, exact=current != path)
                view.delete(current)
        parent = view.get(_parent(path))
        if parent is not None:
            name = _basename(path)
            children = tuple(c for c in parent.children if c != name)
            view.put(_parent(path), attrs.evolve(parent, children=children))

    # -- the operations --------------------------------------------------------------------------

    def _read(self, request: _Request) -> bytes:
        path = self._one_path(request)
        node = self._check(_View(self, request.tx), request.conn, path, _Perm.READ)
        if node is None:
            raise _Failure(errno.ENOENT)
        return node.value

    def _write(self, request: _Request) -> bytes:
        conn = request.conn
        raw_path, sep, value = request.payload.partition(b"\0")
        if not sep:
            raise _Failure(errno.EINVAL)
        path = self._decode_path(conn, raw_path)
        if not conn.privileged and len(value) > VALUE_MAX:
            raise _Failure(errno.ENOSPC)
        view = _View(self, request.tx)
        node = self._check(view, conn, path, _Perm.WRITE)
        if node is None:
            node = self._create(view, path, value, owner=conn.domid)
        else:
            node = attrs.evolve(node, value=value)
            view.put(path, node)
        view.emit(path, node)
        return encode_ok()

    def _mkdir(self, request: _Request) -> bytes:
        path = self._one_path(request)
        view = _View(self, request.tx)
        if self._check(view, request.conn, path, _Perm.WRITE) is None:
            node = self._create(view, path, b"", owner=request.conn.domid)
            view.emit(path, node)
        return encode_ok()

    def _rm(self, request: _Request) -> bytes:
        path = self._one_path(request)
        view = _View(self, request.tx)
        node = self._check(view, request.conn, path, _Perm.WRITE)
        if node is None:
            # Already gone: fine if the parent exists (C xenstored's rule).
            if view.get(_parent(path)) is None:
                raise _Failure(errno.ENOENT)
            return encode_ok()
        if path == "/":
            raise _Failure(errno.EINVAL)
        self._remove_subtree(view, path)
        return encode_ok()

    def _directory(self, request: _Request) -> bytes:
        path = self._one_path(request)
        node = self._check(_View(self, request.tx), request.conn, path, _Perm.READ)
        if node is None:
            raise _Failure(errno.ENOENT)
        return join_strings(node.children)

    def _directory_part(self, request: _Request) -> bytes:
        """``path\\0offset\\0`` -> ``generation\\0`` and the names from byte ``offset`` on that
        fit; an extra NUL marks the end of the list."""
        if count_strings(request.payload) != 2:
            raise _Failure(errno.EINVAL)
        raw_path, raw_offset = split_strings(request.payload)
        path = self._decode_path(request.conn, raw_path)
        node = self._check(_View(self, request.tx), request.conn, path, _Perm.READ)
        if node is None:
            raise _Failure(errno.ENOENT)
        offset = int(raw_offset) if raw_offset.isdigit() else 0
        generation = str(node.generation).encode() + b"\0"
        names = join_strings(node.children)[offset:]
        room = PAYLOAD_MAX - len(generation) - 1
        taken = 0
        for name in split_strings(names):
            if taken + len(name) + 1 > room:
                return generation + names[:taken]
            taken += len(name) + 1
        return generation + names[:taken] + b"\0"

    def _get_perms(self, request: _Request) -> bytes:
        path = self._one_path(request)
        node = self._check(_View(self, request.tx), request.conn, path, _Perm.READ)
        if node is None:
            raise _Failure(errno.ENOENT)
        return join_strings(p.format() for p in node.perms)

    def _set_perms(self, request: _Request) -> bytes:
        conn = request.conn
        parts = split_strings(request.payload)
        if len(parts) < 2:
            raise _Failure(errno.EINVAL)
        if not conn.privileged and len(parts) - 1 > PERMS_PER_NODE:
            raise _Failure(errno.ENOSPC)
        try:
            perms = tuple(Permission.parse(p) for p in parts[1:])
        except ValueError:
            raise _Failure(errno.EINVAL) from None
        path = self._decode_path(conn, parts[0])
        view = _View(self, request.tx)
        node = self._check(view, conn, path, _Perm.WRITE | _Perm.OWNER)
        if node is None:
            raise _Failure(errno.ENOENT)
        if not conn.privileged and perms[0].domid != node.perms[0].domid:
            raise _Failure(errno.EPERM)  # unprivileged domains may not give nodes away
        old_perms = node.perms
        node = attrs.evolve(node, perms=perms)
        view.put(path, node)
        view.emit(path, node, old_perms=old_perms)
        return encode_ok()

    def _watch_args(self, request: _Request) -> tuple[str, bytes, bool]:
        # C accepts a third "depth" argument only with a feature we do not offer.
        if count_strings(request.payload) != 2:
            raise _Failure(errno.EINVAL)
        raw_path, token = split_strings(request.payload)
        path = self._decode_path(request.conn, raw_path, allow_special=True)
        return path, token, is_relative(raw_path.decode("ascii"))

    def _watch(self, request: _Request) -> bytes:
        conn = request.conn
        path, token, relative = self._watch_args(request)
        if any(w.path == path and w.token == token for w in conn.watches):
            raise _Failure(errno.EEXIST)
        if not conn.privileged and len(conn.watches) >= WATCHES_PER_CONNECTION:
            raise _Failure(errno.E2BIG)
        watch = _Watch(path, token, len(conn.home) + 1 if relative else 0)
        conn.watches.append(watch)
        # The watch fires once at once, after the reply.
        payload = join_strings([path[watch.prefix_len :], token])
        if len(payload) <= PAYLOAD_MAX:
            self._outgoing.append((conn, Message(MessageType.WATCH_EVENT, 0, 0, payload).encode()))
        return encode_ok()

    def _unwatch(self, request: _Request) -> bytes:
        conn = request.conn
        path, token, _ = self._watch_args(request)
        for watch in conn.watches:
            if watch.path == path and watch.token == token:
                conn.watches.remove(watch)
                return encode_ok()
        raise _Failure(errno.ENOENT)

    def _reset_watches(self, request: _Request) -> bytes:
        request.conn.watches.clear()
        request.conn.transactions.clear()
        return encode_ok()

    def _transaction_start(self, request: _Request) -> bytes:
        conn = request.conn
        if request.tx is not None:
            raise _Failure(errno.EBUSY)  # no nesting
        if not conn.privileged and len(conn.transactions) >= TRANSACTIONS_PER_CONNECTION:
            raise _Failure(errno.ENOSPC)
        while conn.next_tx_id == 0 or conn.next_tx_id in conn.transactions:
            conn.next_tx_id = (conn.next_tx_id + 1) % 2**32
        tx_id = conn.next_tx_id
        conn.next_tx_id = (tx_id + 1) % 2**32
        conn.transactions[tx_id] = _Transaction(tx_id, dict(self._nodes))
        return str(tx_id).encode() + b"\0"

    def _transaction_end(self, request: _Request) -> bytes:
        try:
            arg = one_arg(request.payload)
        except ValueError:
            raise _Failure(errno.EINVAL) from None
        if arg not in (b"T", b"F"):
            raise _Failure(errno.EINVAL)
        tx = request.tx
        if tx is None:
            raise _Failure(errno.ENOENT)
        del request.conn.transactions[tx.id]
        if arg == b"T":
            self._commit(tx)
        return encode_ok()

    def _commit(self, tx: _Transaction) -> None:
        for path, generation in tx.seen.items():
            node = self._nodes.get(path)
            if (None if node is None else node.generation) != generation:
                raise _Failure(errno.EAGAIN)
        for path in tx.modified:
            node = tx.nodes.get(path)
            if node is None:
                self._nodes.pop(path, None)
            else:
                self._nodes[path] = attrs.evolve(node, generation=self._next_generation())
        for event in tx.events:
            self._fire(event)

    def _get_domain_path(self, request: _Request) -> bytes:
        return domain_path(self._domid_arg(request)).encode() + b"\0"

    def _is_domain_introduced(self, request: _Request) -> bytes:
        return b"T\0" if self._domid_arg(request) in self._domains else b"F\0"

    @staticmethod
    def _domid_arg(request: _Request) -> int:
        try:
            raw = one_arg(request.payload)
        except ValueError:
            raise _Failure(errno.EINVAL) from None
        if not raw.isdigit() or len(raw) > 5 or int(raw) > 0xFFFF:
            raise _Failure(errno.EINVAL)
        return int(raw)
