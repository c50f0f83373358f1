"""The simulated XenStore's transactions: a private view of the store, committed or not.

A transaction works on a shallow copy of the node dict taken when it starts. It remembers the
generation every node it touched had at that time; the commit fails with ``EAGAIN`` if any of
them changed since, and otherwise copies the nodes it modified into the store and fires the
watch events it queued. This is stricter than C xenstored (which only checks nodes it read),
but the same for every client that retries on ``EAGAIN``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Final, final

from ._xs_store import Event, Failure, Node, Store, View

#: Transactions an unprivileged connection may have open, as C xenstored's default quota.
TRANSACTIONS_PER_CONNECTION: Final = 10


@final
class Transaction(View):
    """One open transaction: its copy of the store and what it touched."""

    def __init__(self, tx_id: int, store: Store) -> None:
        self.id = tx_id
        self._store = store
        self._nodes = dict(store.nodes)
        self._seen: dict[str, int | None] = {}  # generation at start, None: absent
        self._modified: set[str] = set()
        self._events: list[Event] = []

    def _note(self, path: str) -> None:
        if path not in self._seen:
            node = self._nodes.get(path)
            self._seen[path] = None if node is None else node.generation

    def get(self, path: str) -> Node | None:
        self._note(path)
        return self._nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        self._note(path)
        self._modified.add(path)
        self._nodes[path] = node

    def delete(self, path: str) -> None:
        self._note(path)
        self._modified.add(path)
        del self._nodes[path]

    def owned_by(self, domid: int) -> int:
        return sum(1 for node in self._nodes.values() if node.perms[0].domid == domid)

    def announce(self, event: Event) -> None:
        self._events.append(event)

    def commit(self, fire: Callable[[Event], None]) -> None:
        """Make the changes live and fire their events.

        Raises:
            Failure: ``EAGAIN`` if a node the transaction touched changed since it started
                (nothing is changed).
        """
        store = self._store
        for path, generation in self._seen.items():
            node = store.nodes.get(path)
            if (None if node is None else node.generation) != generation:
                raise Failure(errno.EAGAIN)
        for path in self._modified:
            node = self._nodes.get(path)
            if node is None:
                store.remove(path)
            else:
                store.set(path, node)
        for event in self._events:
            fire(event)
