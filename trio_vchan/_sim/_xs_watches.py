"""The simulated XenStore's watches: one connection's watches, the events they see, and the
index that finds the watchers of a change without looking at every connection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Generic, TypeVar, final

import attrs

from .._xs_wire import (
    PAYLOAD_MAX,
    Access,
    Message,
    MessageType,
    Permission,
    domain_path,
    join_strings,
)
from ._xs_store import Event, Perm, Perms, is_below, perm_for

#: Watches an unprivileged connection may have, as C xenstored's default quota.
WATCHES_PER_CONNECTION: Final = 128
#: Who may see @introduceDomain/@releaseDomain events (C's default for special nodes).
SPECIAL_PERMS: Final[Perms] = (Permission(Access.NONE, 0),)


Owner = TypeVar("Owner")


@final
class WatchIndex(Generic[Owner]):
    """Which owners (connections) watch each path."""

    def __init__(self) -> None:
        self._by_path: dict[str, dict[Owner, int]] = {}  # path -> owner -> watches

    def add(self, path: str, owner: Owner) -> None:
        owners = self._by_path.setdefault(path, {})
        owners[owner] = owners.get(owner, 0) + 1

    def discard(self, path: str, owner: Owner) -> None:
        owners = self._by_path[path]
        owners[owner] -= 1
        if not owners[owner]:
            del owners[owner]
            if not owners:
                del self._by_path[path]

    def owners(self, event: Event) -> list[Owner]:
        """Those with a watch that ``event`` may fire: on its path, or (unless the event is
        exact) on one above it."""
        path = event.path
        candidates = [path]
        if not event.exact and path.startswith("/"):
            while path != "/":
                path = path.rsplit("/", 1)[0] or "/"
                candidates.append(path)
        found: dict[Owner, None] = {}
        for candidate in candidates:
            owners = self._by_path.get(candidate)
            if owners:
                found.update(dict.fromkeys(owners))
        return list(found)


@attrs.define(eq=False)
class Watch:
    path: str  # absolute or special
    token: bytes
    prefix_len: int  # stripped from event paths of relative watches


def _event_message(path: str, token: bytes) -> bytes | None:
    payload = join_strings([path, token])
    if len(payload) > PAYLOAD_MAX:  # C drops over-long events too
        return None
    return Message(MessageType.WATCH_EVENT, 0, 0, payload).encode()


@final
class Watches(Generic[Owner]):
    """The watches of one connection, as domain ``domid``, listed in ``index`` as ``owner``'s."""

    def __init__(self, domid: int, index: WatchIndex[Owner], owner: Owner) -> None:
        self._index = index
        self._owner = owner
        self._domid = domid
        self._home_len = len(domain_path(domid)) + 1
        self._watches: list[Watch] = []

    def __len__(self) -> int:
        return len(self._watches)

    def find(self, path: str, token: bytes) -> Watch | None:
        for watch in self._watches:
            if watch.path == path and watch.token == token:
                return watch
        return None

    def add(self, path: str, token: bytes, *, relative: bool) -> bytes | None:
        """Add a watch; return the event it fires at once (None if too long to send)."""
        watch = Watch(path, token, self._home_len if relative else 0)
        self._watches.append(watch)
        self._index.add(path, self._owner)
        return _event_message(path[watch.prefix_len :], token)

    def remove(self, watch: Watch) -> None:
        self._watches.remove(watch)
        self._index.discard(watch.path, self._owner)

    def clear(self) -> None:
        for watch in self._watches:
            self._index.discard(watch.path, self._owner)
        self._watches.clear()

    def messages(self, event: Event) -> Iterator[bytes]:
        """The WATCH_EVENT messages ``event`` sends to this connection."""
        if not self._watches:
            return
        if not any(perm_for(self._domid, perms) & Perm.READ for perms in event.perm_lists):
            return
        for watch in self._watches:
            hit = event.path == watch.path
            if not event.exact:
                hit = hit or is_below(event.path, watch.path)
            if hit:
                message = _event_message(event.path[watch.prefix_len :], watch.token)
                if message is not None:
                    yield message
