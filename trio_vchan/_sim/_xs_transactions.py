"""The simulated XenStore's transactions: changes kept aside, then committed or thrown away.

A transaction reads the live store and keeps only what it changed (and the generation of each
node it looked at), so it costs memory in proportion to what it touches, never to the size of
the store; an unprivileged domain's transaction may touch at most
:data:`NODES_PER_TRANSACTION` nodes. It is doomed as soon as it looks at a node changed since
it started, and its commit fails with ``EAGAIN`` then, or if a node it looked at changed
before the commit; otherwise the commit makes its changes live and fires the watch events it
queued. So a committed transaction saw the store as it was when it started. (C xenstored
checks at the commit only; both are the same for clients that retry on ``EAGAIN``.)
"""

from __future__ import annotations

import collections
import errno
from collections.abc import Callable
from typing import Final, final

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
        self._owned: collections.Counter[int] = collections.Counter()  # nodes owned: change
        self._doomed = False
        self._events: list[Event] = []

    def get(self, path: str) -> Node | None:
        if path in self._changes:
            return self._changes[path]
        node = self._store.nodes.get(path)
        if path not in self._seen:
            if self._limit is not None and len(self._seen) >= self._limit:
                raise Failure(errno.ENOSPC)
            self._seen[path] = None if node is None else node.generation
            if node is not None and node.generation > self._start:
                self._doomed = True  # what it reads is not what it would have at its start
        return node

    def put(self, path: str, node: Node) -> None:
        self._replace(path, node)

    def delete(self, path: str) -> None:
        self._replace(path, None)

    def _replace(self, path: str, node: Node | None) -> None:
        old = self.get(path)
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
        for path, changed in self._changes.items():
            if changed is None:
                store.remove(path)
            else:
                store.set(path, changed)
        for event in self._events:
            fire(event)
