"""The simulated XenStore: the operations of the wire protocol, and the host's interface.

Every request is handled synchronously, start to finish, between two awaits, so no locking is
needed: trio runs one task at a time. The parts: the tree and its permissions
(:mod:`._xs_store`), transactions (:mod:`._xs_transactions`), watches (:mod:`._xs_watches`)
and a client's connection (:mod:`._xs_connection`).

Behaviours follow C xenstored (``tools/xenstored/core.c``, ``watch.c``, ``transaction.c``) as
read for this module; differences are listed in ``docs/sim-xenstore.md``.
"""

from __future__ import annotations

import collections
import errno
import logging
import socket
from collections.abc import Callable
from typing import Final, final

import attrs
import trio

from .._backend import check_domid
from .._xs_wire import (
    PAYLOAD_MAX,
    Access,
    Message,
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
from ._xs_connection import Connection, close_stream
from ._xs_store import (
    ROOT_PERMS,
    Event,
    Failure,
    LiveView,
    Perm,
    Perms,
    Store,
    View,
    check,
    create,
    emit,
    parent_of,
    remove_subtree,
)
from ._xs_transactions import TRANSACTIONS_PER_CONNECTION, Transaction
from ._xs_watches import SPECIAL_PERMS, WATCHES_PER_CONNECTION, WatchIndex

#: Limits for unprivileged domains, as C xenstored's defaults.
PERMS_PER_NODE: Final = 5
VALUE_MAX: Final = 2048
#: Connections an unprivileged domain may have open at once. C xenstored has no such quota,
#: as a domain has one ring; here every process of a domain opens sockets of its own, and
#: Xen's libxenvchan opens one per vchan it sets up: 256 is well above what a process setting
#: up 100 vchans at once needs, and bounds the fds and tasks one domain can make the host hold.
CONNECTIONS_PER_DOMAIN: Final = 256

log = logging.getLogger(__name__)

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
# Each type code's MessageType (a dict: MessageType(code) is slow).
_OPS: Final = {op.value: (op, op.name) for op in MessageType}  # the name, as counted
# Operations that ignore the header's tx_id.
_NO_TX_OPS: Final = frozenset({MessageType.WATCH, MessageType.UNWATCH})


def _home_perms(domid: int) -> Perms:
    """``/local/domain/<domid>`` and its toolstack keys: dom0's, readable by the domain."""
    if domid == 0:
        return ROOT_PERMS
    return (Permission(Access.NONE, 0), Permission(Access.READ, domid))


@attrs.define(eq=False)
class Request:
    conn: Connection
    tx: Transaction | None
    payload: bytes


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
        self._store = Store()
        self._live = LiveView(self._store, self._fire)
        self._domains: set[int] = set()
        self._connections: list[Connection] = []
        self._watch_index: WatchIndex[Connection] = WatchIndex()
        self._connected: collections.Counter[int] = collections.Counter()  # by domid
        self._refusing: set[int] = set()  # domains at the connection limit, warned of it
        self._outgoing: list[tuple[Connection, bytes]] = []
        self._handlers: dict[MessageType, Callable[[Request], bytes]] = {
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

    def add_domain(self, domid: int, name: str | None = None) -> None:
        """Introduce ``domid`` as Xen's toolstack (libxl) does; a no-op if it is present.

        Creates ``/local/domain/<domid>`` owned by dom0 and readable by the domain (``n0``,
        ``r<domid>``), its ``domid`` key and, given a ``name``, its ``name`` key (the same
        permissions), and ``data``, owned by the domain (``n<domid>``) so that it may write
        there. Fires ``@introduceDomain``.

        Raises:
            TypeError, ValueError: ``domid`` is not a valid domain id.
        """
        check_domid(domid)
        if domid in self._domains:
            return
        self._domains.add(domid)
        home = domain_path(domid)
        dom_perms = _home_perms(domid)
        for path, value, perms in (
            (home, b"", dom_perms),
            (f"{home}/domid", str(domid).encode(), dom_perms),
            (f"{home}/data", b"", (Permission(Access.NONE, domid),)),
        ):
            create(self._live, path, value, perms)
        if name is not None:
            self.set_domain_name(domid, name)
        self._fire(Event("@introduceDomain", False, (SPECIAL_PERMS,)))
        self._flush()

    def has_domain(self, domid: int) -> bool:
        """Whether ``domid`` was added (and not removed)."""
        return domid in self._domains

    def set_domain_name(self, domid: int, name: str) -> None:
        """Write ``name`` to ``/local/domain/<domid>/name`` (``n0 r<domid>``), as libxl does
        when it creates or renames a domain; fires its watches.

        Raises:
            ValueError: ``domid`` was not added.
        """
        if domid not in self._domains:
            raise ValueError(f"domain {domid!r} is not a domain of this store")
        path = f"{domain_path(domid)}/name"
        node = self._live.get(path)
        if node is None:
            node = create(self._live, path, name.encode(), _home_perms(domid))
        else:
            node = attrs.evolve(node, value=name.encode())
            self._live.put(path, node)
        emit(self._live, path, node)
        self._flush()

    def remove_domain(self, domid: int) -> None:
        """Remove ``/local/domain/<domid>`` and fire ``@releaseDomain``, as after a domain dies.

        Raises:
            ValueError: ``domid`` is dom0 or was not added.
        """
        if domid == 0 or domid not in self._domains:
            raise ValueError(f"domain {domid!r} is not a removable domain of this store")
        self._domains.discard(domid)
        home = domain_path(domid)
        if self._live.get(home) is not None:
            remove_subtree(self._live, home)
        self._fire(Event("@releaseDomain", False, (SPECIAL_PERMS,)))
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
                conn.end()
                conn.cancel_scope.cancel()

    def paths(self) -> list[str]:
        """Every node's path, sorted (for leak checks)."""
        return sorted(self._store.nodes)

    async def handle_connection(self, stream: trio.abc.Stream | socket.socket, domid: int) -> None:
        """Serve one client, as domain ``domid``, until it hangs up; then close ``stream`` (a
        stream, or a connected non-blocking socket: the host's own, served without a wrapper).

        The client's watches and open transactions end with the connection. Never raises for
        anything the client does: a broken stream or a payload over 4096 bytes just ends the
        connection. An unprivileged domain's connection beyond :data:`CONNECTIONS_PER_DOMAIN`
        is closed at once (the client reads the end of the stream).
        """
        check_domid(domid)
        if domid != 0 and self._connected[domid] >= CONNECTIONS_PER_DOMAIN:
            if domid not in self._refusing:  # once while it is at the limit, not per attempt
                self._refusing.add(domid)
                log.warning(
                    "domain %d has %d XenStore connections open, the most it may have: "
                    "closing its new ones until one of those closes",
                    domid,
                    CONNECTIONS_PER_DOMAIN,
                )
            await close_stream(stream)
            return
        conn = Connection(domid, self._watch_index)
        self._connections.append(conn)
        self._connected[domid] += 1
        try:
            await conn.serve(stream, self._handle)
        finally:
            self._connections.remove(conn)
            self._connected[domid] -= 1
            self._refusing.discard(domid)
            if not self._connected[domid]:
                del self._connected[domid]

    # -- requests ----------------------------------------------------------------------------------

    def _handle(self, conn: Connection, request: Message) -> None:
        """Answer one request, then send the watch events it caused."""
        conn.send(self._process(conn, request).encode())
        self._flush()

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        for conn, data in outgoing:
            conn.send(data)

    def _fire(self, event: Event) -> None:
        """Queue watch events for ``event`` (sent after the current reply, by ``_flush``)."""
        for conn in self._watch_index.owners(event):
            for message in conn.watches.messages(event):
                self._outgoing.append((conn, message))

    def _view(self, tx: Transaction | None) -> View:
        return self._live if tx is None else tx

    def _process(self, conn: Connection, request: Message) -> Message:
        """Count and handle one request, and return its reply."""
        known = _OPS.get(request.type)
        if known is None:
            self.requests[conn.domid, str(request.type)] += 1
            op = MessageType.INVALID
        else:
            op, name = known
            self.requests[conn.domid, name] += 1
        try:
            payload = self._dispatch(conn, op, request)
        except Failure as failure:
            return Message(
                MessageType.ERROR, request.req_id, request.tx_id, encode_error(failure.errno)
            )
        return Message(request.type, request.req_id, request.tx_id, payload)

    def _dispatch(self, conn: Connection, op: MessageType, request: Message) -> bytes:
        if op in _PRIVILEGED_OPS and not conn.privileged:
            raise Failure(errno.EACCES)
        handler = self._handlers.get(op)
        if handler is None:
            raise Failure(errno.ENOSYS)
        tx = None
        if op not in _NO_TX_OPS and request.tx_id != 0:
            tx = conn.transactions.get(request.tx_id)
            if tx is None:
                raise Failure(errno.ENOENT)
        payload = handler(Request(conn, tx, request.payload))
        if len(payload) > PAYLOAD_MAX:
            raise Failure(errno.E2BIG)
        return payload

    # -- helpers shared by the operations ----------------------------------------------------------

    @staticmethod
    def _decode_path(conn: Connection, raw: bytes, *, allow_special: bool = False) -> str:
        """Validate a path from the wire and make it absolute; EINVAL if it is not allowed."""
        try:
            path = raw.decode("ascii")
            validate_path(path, allow_special=allow_special)
        except ValueError:
            raise Failure(errno.EINVAL) from None
        return f"{conn.home}/{path}" if is_relative(path) else path

    def _one_path(self, request: Request) -> str:
        try:
            raw = one_arg(request.payload)
        except ValueError:
            raise Failure(errno.EINVAL) from None
        return self._decode_path(request.conn, raw)

    # -- the operations --------------------------------------------------------------------------

    def _read(self, request: Request) -> bytes:
        path = self._one_path(request)
        node = check(self._view(request.tx), request.conn.domid, path, Perm.READ)
        if node is None:
            raise Failure(errno.ENOENT)
        return node.value

    def _write(self, request: Request) -> bytes:
        conn = request.conn
        raw_path, sep, value = request.payload.partition(b"\0")
        if not sep:
            raise Failure(errno.EINVAL)
        path = self._decode_path(conn, raw_path)
        if not conn.privileged and len(value) > VALUE_MAX:
            raise Failure(errno.ENOSPC)
        view = self._view(request.tx)
        node = check(view, conn.domid, path, Perm.WRITE)
        if node is None:
            node = create(view, path, value, owner=conn.domid)
        else:
            node = attrs.evolve(node, value=value)
            view.put(path, node)
        emit(view, path, node)
        return encode_ok()

    def _mkdir(self, request: Request) -> bytes:
        path = self._one_path(request)
        view = self._view(request.tx)
        if check(view, request.conn.domid, path, Perm.WRITE) is None:
            node = create(view, path, b"", owner=request.conn.domid)
            emit(view, path, node)
        return encode_ok()

    def _rm(self, request: Request) -> bytes:
        path = self._one_path(request)
        view = self._view(request.tx)
        node = check(view, request.conn.domid, path, Perm.WRITE)
        if node is None:
            # Already gone: fine if the parent exists (C xenstored's rule).
            if view.peek(parent_of(path)) is None:
                raise Failure(errno.ENOENT)
            return encode_ok()
        if path == "/":
            raise Failure(errno.EINVAL)
        remove_subtree(view, path)
        return encode_ok()

    def _directory(self, request: Request) -> bytes:
        path = self._one_path(request)
        node = check(self._view(request.tx), request.conn.domid, path, Perm.READ)
        if node is None:
            raise Failure(errno.ENOENT)
        return join_strings(node.children)

    def _directory_part(self, request: Request) -> bytes:
        """``path\\0offset\\0`` -> ``generation\\0`` and the names from byte ``offset`` on that
        fit; an extra NUL marks the end of the list."""
        if count_strings(request.payload) != 2:
            raise Failure(errno.EINVAL)
        raw_path, raw_offset = split_strings(request.payload)
        path = self._decode_path(request.conn, raw_path)
        node = check(self._view(request.tx), request.conn.domid, path, Perm.READ)
        if node is None:
            raise Failure(errno.ENOENT)
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

    def _get_perms(self, request: Request) -> bytes:
        path = self._one_path(request)
        node = check(self._view(request.tx), request.conn.domid, path, Perm.READ)
        if node is None:
            raise Failure(errno.ENOENT)
        return join_strings(p.format() for p in node.perms)

    def _set_perms(self, request: Request) -> bytes:
        conn = request.conn
        parts = split_strings(request.payload)
        if len(parts) < 2:
            raise Failure(errno.EINVAL)
        if not conn.privileged and len(parts) - 1 > PERMS_PER_NODE:
            raise Failure(errno.ENOSPC)
        try:
            perms = tuple(Permission.parse(p) for p in parts[1:])
        except ValueError:
            raise Failure(errno.EINVAL) from None
        path = self._decode_path(conn, parts[0])
        view = self._view(request.tx)
        node = check(view, conn.domid, path, Perm.WRITE | Perm.OWNER)
        if node is None:
            raise Failure(errno.ENOENT)
        if not conn.privileged and perms[0].domid != node.perms[0].domid:
            raise Failure(errno.EPERM)  # unprivileged domains may not give nodes away
        old_perms = node.perms
        node = attrs.evolve(node, perms=perms)
        view.put(path, node)
        emit(view, path, node, old_perms=old_perms)
        return encode_ok()

    def _watch_args(self, request: Request) -> tuple[str, bytes, bool]:
        # C accepts a third "depth" argument only with a feature we do not offer.
        if count_strings(request.payload) != 2:
            raise Failure(errno.EINVAL)
        raw_path, token = split_strings(request.payload)
        path = self._decode_path(request.conn, raw_path, allow_special=True)
        return path, token, is_relative(raw_path.decode("ascii"))

    def _watch(self, request: Request) -> bytes:
        conn = request.conn
        path, token, relative = self._watch_args(request)
        if conn.watches.find(path, token) is not None:
            raise Failure(errno.EEXIST)
        if not conn.privileged and len(conn.watches) >= WATCHES_PER_CONNECTION:
            raise Failure(errno.E2BIG)
        first = conn.watches.add(path, token, relative=relative)
        if first is not None:  # the watch fires once at once, after the reply
            self._outgoing.append((conn, first))
        return encode_ok()

    def _unwatch(self, request: Request) -> bytes:
        conn = request.conn
        path, token, _ = self._watch_args(request)
        watch = conn.watches.find(path, token)
        if watch is None:
            raise Failure(errno.ENOENT)
        conn.watches.remove(watch)
        return encode_ok()

    def _reset_watches(self, request: Request) -> bytes:
        request.conn.end()
        return encode_ok()

    def _transaction_start(self, request: Request) -> bytes:
        conn = request.conn
        if request.tx is not None:
            raise Failure(errno.EBUSY)  # no nesting
        if not conn.privileged and len(conn.transactions) >= TRANSACTIONS_PER_CONNECTION:
            raise Failure(errno.ENOSPC)
        while conn.next_tx_id == 0 or conn.next_tx_id in conn.transactions:
            conn.next_tx_id = (conn.next_tx_id + 1) % 2**32
        tx_id = conn.next_tx_id
        conn.next_tx_id = (tx_id + 1) % 2**32
        conn.transactions[tx_id] = Transaction(tx_id, self._store, privileged=conn.privileged)
        return str(tx_id).encode() + b"\0"

    def _transaction_end(self, request: Request) -> bytes:
        try:
            arg = one_arg(request.payload)
        except ValueError:
            raise Failure(errno.EINVAL) from None
        if arg not in (b"T", b"F"):
            raise Failure(errno.EINVAL)
        tx = request.tx
        if tx is None:
            raise Failure(errno.ENOENT)
        del request.conn.transactions[tx.id]
        if arg == b"T":
            tx.commit(self._fire)
        return encode_ok()

    def _get_domain_path(self, request: Request) -> bytes:
        return domain_path(self._domid_arg(request)).encode() + b"\0"

    def _is_domain_introduced(self, request: Request) -> bytes:
        return b"T\0" if self._domid_arg(request) in self._domains else b"F\0"

    @staticmethod
    def _domid_arg(request: Request) -> int:
        try:
            raw = one_arg(request.payload)
        except ValueError:
            raise Failure(errno.EINVAL) from None
        if not raw.isdigit() or len(raw) > 5 or int(raw) > 0xFFFF:
            raise Failure(errno.EINVAL)
        return int(raw)
