"""Notifier: one event-channel fd, any number of waiting tasks.

``trio.lowlevel.wait_readable`` allows one waiter per fd, but a stream's sender and receiver
both wait for the same event channel. So one task watches the fd and the others park; every
wake-up bumps a generation counter. A task takes a token (the generation) *before* it checks
the ring and waits only while the generation is still that token, so an event that arrives
between its check and its wait is never lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import trio

if TYPE_CHECKING:
    from ._backend import EventChannel


@final
class Notifier:
    def __init__(self, channel: EventChannel) -> None:
        self._channel = channel
        self._generation = 0
        self._watching = False
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
        while self._generation == after:
            blocked = True
            if self._closed:
                raise trio.ClosedResourceError("this vchan was already closed")
            if self._watching:
                await self._lot.park()
                continue
            self._watching = True
            try:
                await trio.lowlevel.wait_readable(self._channel.fileno())
                self._channel.consume()
                self._generation += 1
            except trio.ClosedResourceError:
                if self._closed or not self._interrupted:
                    raise trio.ClosedResourceError("this vchan was already closed") from None
                self._interrupted = False  # woken by interrupt(), which counted it
            finally:
                self._watching = False
                self._lot.unpark_all()
        return blocked

    def interrupt(self) -> None:
        """Wake every waiter as an event would (they look at the ring and the stream again)."""
        self._generation += 1
        if self._watching:
            self._interrupted = True
            trio.lowlevel.notify_closing(self._channel.fileno())
        self._lot.unpark_all()

    def close(self) -> None:
        """Wake every waiter with ClosedResourceError; the caller closes the channel after."""
        if self._closed:
            return
        self._closed = True
        if self._watching:
            trio.lowlevel.notify_closing(self._channel.fileno())
        self._lot.unpark_all()
