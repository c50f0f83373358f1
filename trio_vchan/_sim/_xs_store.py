"""The simulated XenStore's tree: nodes, permissions, and the operations every request builds on.

The store is a dict from absolute path to an immutable :class:`Node` (value, permissions,
children in creation order, generation). Requests reach it through a :class:`View`: the live
store (:class:`LiveView`) or a transaction (:mod:`._xs_transactions`), so that the tree
algorithms here (:func:`check`, :func:`create`, :func:`remove_subtree`) are written once.
Nothing here does I/O or knows about connections.
"""

from __future__ import annotations

import collections
import errno
from collections.abc import Callable
from typing import Final, Protocol, final

import attrs

from .._xs_wire import Access, Permission

#: Nodes an unprivileged domain may own, as C xenstored's default quota.
NODES_PER_DOMAIN: Final = 1000

Perms = tuple[Permission, ...]
ROOT_PERMS: Final[Perms] = (Permission(Access.NONE, 0),)


@final
class Perm:
    """What a domain may do to a node: bits of an int (not an enum: checked on every request)."""

    NONE: Final = 0
    READ: Final = 1
    WRITE: Final = 2
    OWNER: Final = 4
    ALL: Final = READ | WRITE | OWNER


_ACCESS_FLAGS: Final[dict[Access, int]] = {
    Access.NONE: Perm.NONE,
    Access.READ: Perm.READ,
    Access.WRITE: Perm.WRITE,
    Access.BOTH: Perm.READ | Perm.WRITE,
}


def perm_for(domid: int, perms: Perms) -> int:
    """What ``domid`` may do to a node with ``perms`` (C's ``perm_for_conn``)."""
    if domid == 0 or perms[0].domid == domid:
        return Perm.ALL
    for p in perms[1:]:
        if p.domid == domid:
            return _ACCESS_FLAGS[p.access]
    return _ACCESS_FLAGS[perms[0].access]


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


def child_of(path: str, name: str) -> str:
    return f"/{name}" if path == "/" else f"{path}/{name}"


def is_below(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or inside it."""
    if top == "/":
        return path.startswith("/")
    return path == top or path.startswith(top + "/")


class Failure(Exception):
    """Ends a request with an ERROR reply carrying ``errno``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.errno = value


@attrs.frozen
class Node:
    value: bytes
    perms: Perms
    children: tuple[str, ...] = ()
    generation: int = 0


@attrs.frozen
class Event:
    """A change to announce: who may see it is decided per watcher when it fires."""

    path: str
    exact: bool  # only watches on exactly this path (for nodes removed below an RM's root)
    perm_lists: tuple[Perms, ...]  # a watcher that may read under any of these sees it


@final
class Store:
    """The live nodes, the generation counter, and how many nodes each domain owns."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"/": Node(b"", ROOT_PERMS)}
        self.generation = 0
        self.owned: collections.Counter[int] = collections.Counter({0: 1})

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def set(self, path: str, node: Node) -> None:
        """Store ``node`` at ``path`` with a new generation."""
        old = self.nodes.get(path)
        if old is not None:
            self.owned[old.perms[0].domid] -= 1
        self.owned[node.perms[0].domid] += 1
        self.nodes[path] = attrs.evolve(node, generation=self.next_generation())

    def remove(self, path: str) -> None:
        old = self.nodes.pop(path, None)
        if old is not None:
            self.owned[old.perms[0].domid] -= 1


class View(Protocol):
    """The store as one request sees it."""

    def get(self, path: str) -> Node | None: ...

    def peek(self, path: str) -> Node | None:
        """The node at ``path``, for its existence, value and permissions only: a change to
        its children alone does not matter to the request (see :meth:`add_child`)."""
        ...

    def add_child(self, path: str, name: str) -> None:
        """Add ``name`` to the children of the node at ``path`` (which exists)."""
        ...

    def remove_child(self, path: str, name: str) -> None:
        """Remove ``name`` from the children of the node at ``path`` (which exists)."""
        ...

    def put(self, path: str, node: Node) -> None: ...

    def delete(self, path: str) -> None: ...

    def owned_by(self, domid: int) -> int:
        """How many nodes ``domid`` owns."""
        ...

    def announce(self, event: Event) -> None:
        """Fire ``event``'s watches now, or when the transaction commits."""
        ...


@final
class LiveView(View):
    """The live store: changes take effect, and events fire, at once."""

    def __init__(self, store: Store, fire: Callable[[Event], None]) -> None:
        self._store = store
        self._fire = fire

    def get(self, path: str) -> Node | None:
        return self._store.nodes.get(path)

    peek = get

    def add_child(self, path: str, name: str) -> None:
        node = self._store.nodes[path]
        self._store.set(path, attrs.evolve(node, children=(*node.children, name)))

    def remove_child(self, path: str, name: str) -> None:
        node = self._store.nodes[path]
        children = tuple(c for c in node.children if c != name)
        self._store.set(path, attrs.evolve(node, children=children))

    def put(self, path: str, node: Node) -> None:
        self._store.set(path, node)

    def delete(self, path: str) -> None:
        self._store.remove(path)

    def owned_by(self, domid: int) -> int:
        return self._store.owned[domid]

    def announce(self, event: Event) -> None:
        self._fire(event)


def emit(
    view: View, path: str, node: Node, *, exact: bool = False, old_perms: Perms | None = None
) -> None:
    """Announce a change to ``node`` at ``path``.

    As C's ``watch_permitted``: watchers that may read the node, its parent, or (for a
    permission change) the node as it was, see the event.
    """
    perm_lists = [node.perms]
    parent = view.peek(parent_of(path))
    if parent is not None:
        perm_lists.append(parent.perms)
    if old_perms is not None:
        perm_lists.append(old_perms)
    view.announce(Event(path, exact, tuple(perm_lists)))


def check(view: View, domid: int, path: str, need: int) -> Node | None:
    """Return the node at ``path`` if ``domid`` may ``need`` it, ``None`` if it is missing.

    As C's ``get_node_chk_perm``: a missing node reports ENOENT only to those with the same
    access to its nearest existing ancestor; the others, and those denied access to an
    existing node, get EACCES, so that permissions hide what exists.
    """
    node = view.get(path)
    if node is not None:
        if perm_for(domid, node.perms) & need == need:
            return node
        raise Failure(errno.EACCES)
    ancestor = parent_of(path)
    above = view.peek(ancestor)
    while above is None:  # ends at the root, which always exists
        ancestor = parent_of(ancestor)
        above = view.peek(ancestor)
    if not perm_for(domid, above.perms) & need:
        raise Failure(errno.EACCES)
    return None


def create(view: View, path: str, value: bytes, perms: Perms | None = None, owner: int = 0) -> Node:
    """Create ``path`` and its missing parents; return the new node (watches not fired).

    New nodes inherit their parent's permissions, with ``owner`` (an unprivileged writer) as
    the owner; ``perms`` overrides that for the node itself.

    Raises:
        Failure: ``ENOSPC`` if ``owner`` would own more than :data:`NODES_PER_DOMAIN` nodes.
    """
    missing = [path]
    parent = view.peek(parent_of(path))
    while parent is None:  # ends at the root, which always exists
        missing.append(parent_of(missing[-1]))
        parent = view.peek(parent_of(missing[-1]))
    if owner != 0 and view.owned_by(owner) + len(missing) > NODES_PER_DOMAIN:
        raise Failure(errno.ENOSPC)
    for name in reversed(missing):
        view.add_child(parent_of(name), basename(name))
        inherited = parent.perms
        if owner != 0:
            inherited = (Permission(inherited[0].access, owner), *inherited[1:])
        parent = Node(b"", inherited)
        view.put(name, parent)
    node = attrs.evolve(parent, value=value, perms=perms or parent.perms)
    view.put(path, node)
    return node


def remove_subtree(view: View, path: str) -> None:
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
            stack.extend(child_of(current, name) for name in node.children)
    for current in reversed(order):  # children before their parents, as C's walk
        node = view.get(current)
        if node is not None:
            emit(view, current, node, exact=current != path)
            view.delete(current)
    if view.peek(parent_of(path)) is not None:
        view.remove_child(parent_of(path), basename(path))
