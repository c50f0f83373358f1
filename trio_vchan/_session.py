"""A process's connections to its platform, shared by all its listeners and streams.

Every listener and stream of one ``trio.run`` that uses the same backend (the default one, or
one the caller passes) shares one :class:`Session`: one XenStore connection, opened on first
use and opened afresh if it broke, and for the default backend one platform connection. Both
close when the last user lets go.

The session also notices peer domains that are destroyed (on Xen nothing else does: a dead
domain clears no live byte and sends no event): while streams are open, a system task watches
``@releaseDomain`` and, at each event, looks whether each peer's home ``/local/domain/<domid>``
still exists (one XenStore read per peer domain); the streams of a peer that has gone are told
so. C xenstored sends ``@releaseDomain`` only to dom0 (and domains the toolstack allows), and
only dom0 may read other domains' homes, so only dom0's sessions watch.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import Final, final

import trio

from ._advertisement import XenStoreAdvertisements
from ._backend import Backend
from ._errors import BackendUnavailableError, XenStoreError
from ._xenstore import XenStoreClient

_log = logging.getLogger("trio_vchan")

XEN_EVTCHN_DEVICE: Final = "/dev/xen/evtchn"
_SIM_ENV: Final = "TRIO_VCHAN_SIM"
_LOOK_AGAIN: Final = (0.25, 0.5, 1.0, 2.0)  # seconds, after a @releaseDomain event
#: How long each deferred cleanup may take (see :meth:`Session.defer`).
CHORE_TIME: Final = 2.0

# Keyed by ``id()`` of the caller's backend, or None for the default one.
_SESSIONS: trio.lowlevel.RunVar[dict[int | None, Session]] = trio.lowlevel.RunVar(
    "trio_vchan.sessions"
)


def default_backend() -> Backend:
    """The platform this process runs on: a simulated host named by the environment, else Xen.

    Raises:
        BackendUnavailableError: neither is available; the message says how to get either.
    """
    if os.environ.get(_SIM_ENV):
        from .sim import backend_from_environ

        return backend_from_environ()
    if os.path.exists(XEN_EVTCHN_DEVICE):
        try:
            from ._linux import open_backend  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise BackendUnavailableError(
                f"{XEN_EVTCHN_DEVICE} exists, but this trio-vchan has no Xen device backend yet;"
                " use a simulated host (trio-vchan sim)"
            ) from None
        backend: Backend = open_backend()
        return backend
    raise BackendUnavailableError(
        "no vchan platform found: to use a simulated Xen host, run inside `trio-vchan sim --"
        " COMMAND` (or set TRIO_VCHAN_SIM to a running host's directory and TRIO_VCHAN_DOMID to"
        f" this process's domain id); on Xen, {XEN_EVTCHN_DEVICE} must exist (modprobe"
        " xen-evtchn xen-gntdev xen-gntalloc; mount -t xenfs xenfs /proc/xen)"
    )


def _sessions() -> dict[int | None, Session]:
    try:
        return _SESSIONS.get()
    except LookupError:
        sessions: dict[int | None, Session] = {}
        _SESSIONS.set(sessions)
        return sessions


@final
class Session:
    """One backend and its XenStore connection, counted by users; get one with :meth:`join`."""

    def __init__(self, key: int | None, backend: Backend) -> None:
        self._key = key
        self.backend = backend
        self._users = 0
        self._xenstore: XenStoreClient | None = None
        self._opening = trio.Lock()
        #: Where this domain's servers advertise and its clients look up, through
        #: :meth:`xenstore`.
        self.advertisements = XenStoreAdvertisements(backend.domid, self.xenstore)
        self._peers: dict[int, tuple[int, Callable[[], None]]] = {}
        self._next_peer = itertools.count()
        self._watcher: trio.CancelScope | None = None
        self._chores: collections.deque[tuple[str, Callable[[], Awaitable[None]], trio.Event]]
        self._chores = collections.deque()

    @classmethod
    def join(cls, backend: Backend | None) -> Session:
        """The session of ``backend`` (None: the default one) in this run, one user more.

        Raises:
            BackendUnavailableError: no default backend.
        """
        sessions = _sessions()
        key = None if backend is None else id(backend)
        session = sessions.get(key)
        if session is None:
            session = cls(key, default_backend() if backend is None else backend)
            sessions[key] = session
        session._users += 1
        return session

    async def xenstore(self) -> XenStoreClient:
        """The shared XenStore client, connecting (again, if the last one broke) as needed."""
        async with self._opening:
            if self._xenstore is None or not self._xenstore.usable:
                if self._xenstore is not None:
                    await self._xenstore.aclose()
                self._xenstore = XenStoreClient(await self.backend.connect_xenstore())
            return self._xenstore

    def defer(self, what: str, action: Callable[[], Awaitable[None]]) -> trio.Event:
        """Run cleanup ``action`` soon in a task of the session's own, outside the (cancelled)
        caller: in order, shielded, each for at most :data:`CHORE_TIME` seconds, a failure
        logged as "could not <what>". The session stays open until the chores are done (and
        a run that ends waits for them). Returns an event set once ``action`` has run."""
        done = trio.Event()
        if not self._chores:
            try:
                trio.lowlevel.spawn_system_task(self._do_chores, name="trio_vchan: cleanup")
            except RuntimeError as exc:  # the run is ending: nobody is left to do it
                _log.warning("could not %s: %s", what, exc)
                done.set()
                return done
            self.add_user()  # held by the chores until they are done
        self._chores.append((what, action, done))
        return done

    async def _do_chores(self) -> None:
        try:
            while self._chores:
                what, action, done = self._chores[0]
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + CHORE_TIME
                    try:
                        await action()
                    except Exception as exc:  # a system task must not raise
                        _log.warning("could not %s: %s", what, exc)
                if scope.cancelled_caught:
                    _log.warning("could not %s: no answer within %s s", what, CHORE_TIME)
                self._chores.popleft()
                done.set()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.leave()
                except Exception as exc:
                    _log.warning("could not close the XenStore connection: %s", exc)

    def watch_peer(self, domid: int, gone: Callable[[], None]) -> Callable[[], None]:
        """Call ``gone()`` (once) if domain ``domid`` is destroyed; returns how to stop."""
        if self.backend.domid != 0:  # only dom0 hears of destroyed domains (see above)
            return lambda: None
        key = next(self._next_peer)
        self._peers[key] = (domid, gone)
        if self._watcher is None:
            self._watcher = trio.CancelScope()
            trio.lowlevel.spawn_system_task(
                self._watch_domains, self._watcher, name="trio_vchan: @releaseDomain"
            )
        return lambda: self._peers.pop(key, None) and None

    async def _watch_domains(self, scope: trio.CancelScope) -> None:
        with scope:
            try:
                xs = await self.xenstore()
                async with xs.watching("@releaseDomain") as released:
                    again: list[float] = []  # looks still to take after an event
                    registered = False
                    while True:
                        with trio.move_on_after(again.pop(0) if again else math.inf) as timer:
                            await released.wait()
                        if not timer.cancelled_caught and registered:
                            # A dying domain's home may outlive the event a little (the
                            # toolstack removes it): look again a few times.
                            again = list(_LOOK_AGAIN)
                        registered = True  # the first event was the watch's own
                        for domid in {domid for domid, _ in self._peers.values()}:
                            if not await _domain_exists(xs, domid):
                                self._domain_gone(domid)
            except Exception as exc:  # a system task must not raise: say why it stopped
                if not scope.cancel_called:  # (else the session closed under it)
                    _log.warning("stopped watching for destroyed peer domains: %s", exc)
            finally:
                if self._watcher is scope:
                    self._watcher = None

    def _domain_gone(self, domid: int) -> None:
        for key, (peer, gone) in list(self._peers.items()):
            if peer == domid:
                del self._peers[key]
                gone()

    def add_user(self) -> None:
        self._users += 1

    def leave_unused(self) -> None:
        """As :meth:`leave`, for a user that has not used XenStore (nothing to await)."""
        self._users -= 1
        if not self._users:
            self._detach()
            self._close_backend()

    async def leave(self) -> None:
        """One user less; the last one closes the XenStore connection (and a default backend)."""
        self._users -= 1
        if self._users:
            return
        self._detach()  # first: a join meanwhile gets a fresh session, not this closing one
        xenstore, self._xenstore = self._xenstore, None
        try:
            if xenstore is not None:
                with trio.CancelScope(shield=True):
                    await xenstore.aclose()
        finally:
            self._close_backend()

    def _detach(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if _sessions().get(self._key) is self:
            del _sessions()[self._key]

    def _close_backend(self) -> None:
        if self._key is None:  # ours: the default backend
            self.backend.close()


async def _domain_exists(xs: XenStoreClient, domid: int) -> bool:
    """Whether ``/local/domain/<domid>`` exists, as far as we may tell (EACCES: assume so)."""
    try:
        await xs.read(f"/local/domain/{domid}")
    except XenStoreError as exc:
        if exc.errno == errno.ENOENT:
            return False
        if exc.errno != errno.EACCES:
            raise
    return True
