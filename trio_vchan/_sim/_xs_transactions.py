"""The simulated XenStore's transactions: changes kept aside, then committed or thrown away.

A transaction reads the live store and keeps only what it changed (and the generation of each
node it looked at), so it costs memory in proportion to what it touches, never to the size of
the store; an unprivileged domain's transaction may touch at most
:data:`NODES_PER_TRANSACTION` nodes. It is doomed as soon as it looks at a node changed since
it started, and its commit fails with ``EAGAIN`` then, or if a node it looked at changed
before the commit; otherwise the commit makes its changes live and fires the watch events it
queued. (C xenstored checks at the commit only; both are the same for clients that retry on
``EAGAIN``.)

A parent that a transaction only adds a child to or removes one from (and a node it only
checks permissions on, or only sees exist) is looked at more lightly: only a change to its
existence, value or permissions fails the commit, and the commit applies the transaction's
additions and removals to the children the parent has then. So transactions that create
siblings at once (every server advertising under one directory) do not fail each other.
"""

from __future__ import annotations

import collections
import errno
from collections.abc import Callable
from typing import Final, final

import attrs

from ._xs_store import Event, Failure, Node, Store, View

#: Transactions an unprivileged connection may have open, as C xenstored's default quota.
TRANSACTIONS_PER_CONNECTION: Final = 10
#: Nodes one transaction of an unprivileged domain may look at or change (C xenstored's
#: default ``transaction-nodes`` quota).
NODES_PER_TRANSACTION: Final = 1024


@final
class Transaction(View):
    """One open transaction: what it changed, and the generations of what it looked at."""

    def __init__(self, tx_id: int, store: Store, *, privileged: bool) -> None:
        self.id = tx_id
        self._store = store
        self._start = store.generation
        self._limit = None if privileged else NODES_PER_TRANSACTION
        self._changes: dict[str, Node | None] = {}  # None: deleted
        self._seen: dict[str, int | None] = {}  # generation when first looked at, None: absent
        self._peeked: dict[str, Node | None] = {}  # as first peeked at (not in _seen)
        self._child_ops: dict[str, list[tuple[bool, str]]] = {}  # (added?, name) for live nodes
        self._owned: collections.Counter[int] = collections.Counter()  # nodes owned: change
        self._doomed = False
        self._events: list[Event] = []

    def get(self, path: str) -> Node | None:
        if path in self._changes:
            return self._changes[path]
        node = self._store.nodes.get(path)
        if path not in self._seen:
            self._count(path)
            self._peeked.pop(path, None)
            self._seen[path] = None if node is None else node.generation
            if node is not None and node.generation > self._start:
                self._doomed = True  # what it reads is not what it would have at its start
        return self._with_child_ops(path, node)

    def peek(self, path: str) -> Node | None:
        if path in self._changes:
            return self._changes[path]
        node = self._store.nodes.get(path)
        if path not in self._seen and path not in self._peeked:
            self._count(path)
            self._peeked[path] = node
        return self._with_child_ops(path, node)

    def _count(self, path: str) -> None:
        if self._limit is not None and len(self._seen) + len(self._peeked) >= self._limit:
            raise Failure(errno.ENOSPC)

    def _with_child_ops(self, path: str, node: Node | None) -> Node | None:
        ops = self._child_ops.get(path)
        if node is None or ops is None:
            return node
        return attrs.evolve(node, children=_apply(node.children, ops))

    def add_child(self, path: str, name: str) -> None:
        self._child_op(path, True, name)

    def remove_child(self, path: str, name: str) -> None:
        self._child_op(path, False, name)

    def _child_op(self, path: str, added: bool, name: str) -> None:
        changed = self._changes.get(path)
        if changed is not None:  # created or rewritten here: change it there
            self._changes[path] = attrs.evolve(
                changed, children=_apply(changed.children, [(added, name)])
            )
        else:
            self.peek(path)
            self._child_ops.setdefault(path, []).append((added, name))

    def put(self, path: str, node: Node) -> None:
        self._replace(path, node)

    def delete(self, path: str) -> None:
        self._replace(path, None)

    def _replace(self, path: str, node: Node | None) -> None:
        old = self.get(path)
        self._child_ops.pop(path, None)  # ``node`` has them (it was made from ``old``)
        if old is not None:
            self._owned[old.perms[0].domid] -= 1
        if node is not None:
            self._owned[node.perms[0].domid] += 1
        self._changes[path] = node

    def owned_by(self, domid: int) -> int:
        return self._store.owned[domid] + self._owned[domid]

    def announce(self, event: Event) -> None:
        self._events.append(event)

    def commit(self, fire: Callable[[Event], None]) -> None:
        """Make the changes live and fire their events.

        Raises:
            Failure: ``EAGAIN`` if a node the transaction looked at changed since it started
                (nothing is changed).
        """
        store = self._store
        if self._doomed:
            raise Failure(errno.EAGAIN)
        for path, generation in self._seen.items():
            node = store.nodes.get(path)
            if (None if node is None else node.generation) != generation:
                raise Failure(errno.EAGAIN)
        for path, peeked in self._peeked.items():
            node = store.nodes.get(path)
            if node is None or peeked is None:
                if node is not peeked:
                    raise Failure(errno.EAGAIN)
            elif node.value != peeked.value or node.perms != peeked.perms:
                raise Failure(errno.EAGAIN)
        for path, changed in self._changes.items():
            if changed is None:
                store.remove(path)
            else:
                store.set(path, changed)
        for path, ops in self._child_ops.items():
            live = store.nodes[path]  # it exists: it was peeked at, unchanged
            store.set(path, attrs.evolve(live, children=_apply(live.children, ops)))
        for event in self._events:
            fire(event)


def _apply(children: tuple[str, ...], ops: list[tuple[bool, str]]) -> tuple[str, ...]:
    """``children`` after the additions and removals ``ops``, in order."""
    result = list(children)
    for added, name in ops:
        if added:
            if name not in result:
                result.append(name)
        elif name in result:
            result.remove(name)
    return tuple(result)
