"""Notifier: a port's wake-ups, for any number of waiting tasks, over an fd other ports may share.

``trio.lowlevel.wait_readable`` allows one waiter per fd, but a stream's sender and receiver
both wait for the same event channel, and on Linux every port of a process reports on one
``/dev/xen/evtchn`` file. So the notifiers of the ports on one fd share a :class:`_Watch`: one
waiting task at a time (of any of those ports) waits on the fd, reads which ports fired
(``EventChannel.consume()``) and wakes their waiters; the others park, each on its own port's
lot, so an event wakes only the tasks that wait for it. A watcher whose port has not fired
goes on watching; one that leaves (its port fired, it was cancelled) hands the fd to a task
still parked.

Every wake-up bumps the port's generation. A task takes a token (the generation) *before* it
checks the ring and waits only while the generation is still that token, so an event that
arrives between its check and its wait is never lost. An event for a port that has no notifier
(not yet, or no more) is dropped: whoever makes one takes its token and then looks.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, final

import trio

if TYPE_CHECKING:
    from ._backend import EventChannel


@final
class _Watch:
    """The notifiers of the ports that report on one fd, and which of their tasks waits on it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # By port; weakly, so that a stream dropped unclosed does not stay registered.
        self.notifiers: weakref.WeakValueDictionary[int, Notifier] = weakref.WeakValueDictionary()
        self.watcher: Notifier | None = None
        self.parked: dict[Notifier, int] = {}  # how many tasks of each are parked

    def dispatch(self, ports: Iterable[int]) -> None:
        for port in ports:
            notifier = self.notifiers.get(port)
            if notifier is not None:
                notifier._fired()

    def hand_over(self) -> None:
        """If nobody waits on the fd, wake one parked task (of any port here) to do it."""
        if self.watcher is not None:
            return
        for notifier in self.parked:
            if notifier._lot:  # else its tasks are woken already, and leave or take over
                notifier._lot.unpark()
                return


# One watch per fd in use, while a notifier holds it. The fd cannot be reused meanwhile: the
# notifiers' channels keep their files open.
_WATCHES: Final[weakref.WeakValueDictionary[int, _Watch]] = weakref.WeakValueDictionary()


@final
class Notifier:
    def __init__(self, channel: EventChannel) -> None:
        self._channel = channel
        self._port = channel.port
        fd = channel.fileno()
        watch = _WATCHES.get(fd)
        if watch is None:
            watch = _WATCHES[fd] = _Watch(fd)
        self._watch = watch
        watch.notifiers[self._port] = self  # the port's latest notifier takes its events
        self._generation = 0
        self._closed = False
        self._interrupted = False
        self._lot = trio.lowlevel.ParkingLot()

    def token(self) -> int:
        """The current generation: take it before looking at the shared memory."""
        return self._generation

    async def wait(self, after: int) -> bool:
        """Return once an event has arrived since ``token()`` returned ``after``.

        Returns:
            Whether the task actually blocked (then the wait was a full trio checkpoint).

        Raises:
            trio.ClosedResourceError: the stream was closed, before or during the wait.
        """
        blocked = False
        watch = self._watch
        try:
            while self._generation == after:
                blocked = True
                if self._closed:
                    raise trio.ClosedResourceError("this vchan was already closed")
                if watch.watcher is None:
                    await self._watch_fd(after)
                    continue
                watch.parked[self] = watch.parked.get(self, 0) + 1
                try:
                    await self._lot.park()
                finally:
                    if watch.parked[self] == 1:
                        del watch.parked[self]
                    else:
                        watch.parked[self] -= 1
        finally:
            # Whether it watched or was woken to (and then found its own event, or was
            # cancelled or closed): a task leaving frees the fd for the tasks still parked.
            watch.hand_over()
        return blocked

    async def _watch_fd(self, after: int) -> None:
        """Wait on the fd until our port fires; dispatch the other ports' events meanwhile."""
        watch = self._watch
        watch.watcher = self
        try:
            while self._generation == after:
                await trio.lowlevel.wait_readable(watch.fd)
                watch.dispatch(self._channel.consume())
        except trio.ClosedResourceError:
            if self._closed or not self._interrupted:
                raise trio.ClosedResourceError("this vchan was already closed") from None
            self._interrupted = False  # woken by interrupt(), which counted it
        finally:
            watch.watcher = None

    def _fired(self) -> None:
        self._generation += 1
        self._lot.unpark_all()

    def interrupt(self) -> None:
        """Wake every waiter as an event would (they look at the ring and the stream again)."""
        self._generation += 1
        if self._watch.watcher is self:
            self._interrupted = True
            trio.lowlevel.notify_closing(self._watch.fd)
        self._lot.unpark_all()

    def close(self) -> None:
        """Wake every waiter with ClosedResourceError and stop taking this port's events; the
        caller closes the channel after."""
        if self._closed:
            return
        self._closed = True
        watch = self._watch
        if watch.watcher is self:
            trio.lowlevel.notify_closing(watch.fd)
        self._lot.unpark_all()
        if watch.notifiers.get(self._port) is self:
            del watch.notifiers[self._port]
