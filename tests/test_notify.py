"""Notifier over one fd that many ports share (as every port of a Linux backend shares its
evtchn file): each event wakes the tasks of its own port only, none is lost when the task that
waits on the fd leaves, is cancelled or its stream closes."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from trio_vchan._backend import ChannelStatus
from trio_vchan._notify import Notifier


class SharedFile:
    """One eventfd standing for an evtchn file: readable while any of its ports fired."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.pending: list[int] = []

    def fire(self, port: int) -> None:
        self.pending.append(port)
        os.eventfd_write(self.fd, 1)

    def take(self) -> list[int]:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fd)
        ports, self.pending = self.pending, []
        return ports


class Channel:
    def __init__(self, file: SharedFile, port: int) -> None:
        self.file = file
        self.port = port

    def fileno(self) -> int:
        return self.file.fd

    def consume(self) -> list[int]:
        return self.file.take()

    def notify(self) -> None:
        raise NotImplementedError

    def status(self) -> ChannelStatus:
        return ChannelStatus.UNKNOWN

    def close(self) -> None:
        pass


@pytest.fixture
def file() -> Iterator[SharedFile]:
    shared = SharedFile()
    yield shared
    os.close(shared.fd)


def _notifiers(file: SharedFile, count: int) -> list[Notifier]:
    return [Notifier(Channel(file, port)) for port in range(1, count + 1)]


def _parked(notifier: Notifier) -> int:
    return len(notifier._lot)


async def test_each_event_wakes_its_own_port_only(file: SharedFile) -> None:
    notifiers = _notifiers(file, 20)
    woken: list[int] = []

    async def waiter(index: int) -> None:
        await notifiers[index].wait(notifiers[index].token())
        woken.append(index)

    order = list(range(20))
    random.Random(7).shuffle(order)
    async with trio.open_nursery() as nursery:
        for index in range(20):
            for _ in range(2):  # a stream's sender and receiver
                nursery.start_soon(waiter, index)
        await trio.testing.wait_all_tasks_blocked()
        for step, index in enumerate(order):
            file.fire(index + 1)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(woken) == sorted([i for i in order[: step + 1] for _ in range(2)])
            # Every other port's tasks are still waiting: one on the fd, the rest parked.
            waiting = [i for i in order[step + 1 :]]
            parked = sum(_parked(notifiers[i]) for i in waiting)
            assert parked == 2 * len(waiting) - (1 if waiting else 0)
    for notifier in notifiers:
        notifier.close()


async def test_the_fd_passes_on_when_its_watcher_is_cancelled(file: SharedFile) -> None:
    first, second = _notifiers(file, 2)
    woken = trio.Event()
    scope = trio.CancelScope()

    async def cancelled() -> None:
        with scope:
            await first.wait(first.token())

    async def waits() -> None:
        await second.wait(second.token())
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancelled)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waits)
        await trio.testing.wait_all_tasks_blocked()
        assert _parked(second) == 1  # the first task waits on the fd
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert _parked(second) == 0  # it took the fd over
        file.fire(2)
        with trio.fail_after(5):
            await woken.wait()
    first.close()
    second.close()


async def test_closing_the_watchers_port_leaves_the_others_served(file: SharedFile) -> None:
    first, second, third = _notifiers(file, 3)
    results: dict[str, object] = {}
    third_woken = trio.Event()

    async def wait(name: str, notifier: Notifier) -> None:
        try:
            results[name] = await notifier.wait(notifier.token())
        except trio.ClosedResourceError:
            results[name] = "closed"
        if name == "third":
            third_woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "first", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait, "second", second)
        nursery.start_soon(wait, "third", third)
        await trio.testing.wait_all_tasks_blocked()
        first.close()  # its task was the one on the fd
        await trio.testing.wait_all_tasks_blocked()
        assert results == {"first": "closed"}
        second.interrupt()  # a parked one: wakes as an event would
        await trio.testing.wait_all_tasks_blocked()
        assert results == {"first": "closed", "second": True}
        file.fire(1)  # the closed port's late event is dropped
        file.fire(3)
        with trio.fail_after(5):
            await third_woken.wait()
    assert results["third"] is True
    second.close()
    third.close()


async def test_an_event_before_the_wait_is_not_lost(file: SharedFile) -> None:
    first, second = _notifiers(file, 2)
    token = second.token()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first.wait, first.token())
        await trio.testing.wait_all_tasks_blocked()
        file.fire(2)  # the first port's task reads it for the second, which is not waiting
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5):
            assert await second.wait(token) is False  # it came after the token: no block
        file.fire(1)
    first.close()
    second.close()


async def test_events_read_together_leave_the_fd_watched(file: SharedFile) -> None:
    """The task on the fd reads its own port's event and others' at once: when it leaves, a
    task of a port still waiting takes the fd over (not one of those just woken)."""
    notifiers = _notifiers(file, 4)
    woken: list[int] = []

    async def waiter(index: int) -> None:
        await notifiers[index].wait(notifiers[index].token())
        woken.append(index)

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(waiter, index)
            await trio.testing.wait_all_tasks_blocked()  # index 0 waits on the fd
        file.fire(1)
        file.fire(2)
        file.fire(3)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woken) == [0, 1, 2]
        assert _parked(notifiers[3]) == 0  # it waits on the fd now
        file.fire(4)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woken) == [0, 1, 2, 3]
    for notifier in notifiers:
        notifier.close()
