"""Every interleaving of the two sides' shared-memory steps, for small rings (a model checker).

Both sides run the stream's real algorithms over real RingEndpoints in two threads, but only one
thread moves at a time: every access to the shared page (each call into ``_native``) is a
scheduling point, and a controller decides who takes the next step. A depth-first search then
replays the run with every alternative choice, as a stateless model checker does, bounded by
the number of preemptions (switching away from a side that could have continued), which is
what makes the search finite and still finds the races that need few preemptions
(the lost wake-ups and the data lost at close found in libxenvchan by talex5/spec-vchan need
two). Checked in every run: no lost wake-up (both sides asleep with work pending), every byte
delivered once and in order, end of stream only after the last byte.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from ring_pairs import make_pair

import trio_vchan._ring
from trio_vchan._layout import Live, RingOrders
from trio_vchan._ring import RingEndpoint

PREEMPTION_BOUND = int(os.environ.get("TRIO_VCHAN_INTERLEAVING_BOUND", "3"))


class _Deadlock(Exception):
    pass


@attrs.define
class _Worker:
    body: Callable[[], None]
    go: threading.Semaphore = attrs.Factory(lambda: threading.Semaphore(0))
    done: bool = False
    waiting_for_event: bool = False
    event: bool = False  # a pending event-channel notification (coalescing, like Xen's)
    satisfiable: Callable[[], bool] = lambda: False
    deciding: bool = False
    error: BaseException | None = None
    thread: threading.Thread | None = None


class Controller:
    """Runs two workers in lock step, following ``schedule`` and then continuing the current one."""

    def __init__(self, schedule: list[int]) -> None:
        self.schedule = schedule
        self.workers: list[_Worker] = []
        self.back = threading.Semaphore(0)
        self.local = threading.local()
        self.choices: list[tuple[int, list[int], int]] = []  # (chosen, enabled, current)
        self.aborting = False
        self.checking = False

    # -- called from the workers ------------------------------------------------------------------

    def point(self) -> None:
        worker: _Worker | None = getattr(self.local, "worker", None)
        if worker is None or self.checking:
            return  # the controller itself (setup), or an invariant check: not a step
        self.back.release()
        worker.go.acquire()
        if self.aborting:
            raise _Deadlock

    def notify(self, target: int) -> None:
        self.workers[target].event = True

    def wait_event(self, satisfiable: Callable[[], bool]) -> None:
        """Sleep until an event arrives; ``satisfiable`` says whether the wait could end now."""
        worker: _Worker = self.local.worker
        worker.satisfiable = satisfiable
        worker.waiting_for_event = True
        self.point()
        worker.event = False
        worker.waiting_for_event = False

    def published(self) -> None:
        """The calling side changed an index or live byte and has yet to decide on the event."""
        worker: _Worker | None = getattr(self.local, "worker", None)
        if worker is not None:
            worker.deciding = True

    @contextlib.contextmanager
    def operation(self) -> Iterator[None]:
        """A read, write or close together with the event it may send."""
        worker: _Worker = self.local.worker
        try:
            yield
        finally:
            worker.deciding = False

    def check_no_lost_wake_up(self) -> None:
        """After every step: a sleeping side whose wait is satisfiable has an event pending,
        unless the other side published a change and has not yet decided on its event."""
        busy = any(w.deciding for w in self.workers)
        self.checking = True
        try:
            for worker in self.workers:
                if worker.waiting_for_event and not worker.event and not busy:
                    assert not worker.satisfiable(), (
                        f"lost wake-up: a side sleeps with its wait satisfiable, no event"
                        f" pending; schedule {self.choices}"
                    )
        finally:
            self.checking = False

    # -- the search -------------------------------------------------------------------------------

    def start(self, bodies: list[Callable[[], None]]) -> None:
        for body in bodies:
            worker = _Worker(body)
            self.workers.append(worker)
            worker.thread = threading.Thread(target=self._run, args=(worker,), daemon=True)
            worker.thread.start()
            self.back.acquire()  # the worker parks at its first point

    def _run(self, worker: _Worker) -> None:
        self.local.worker = worker
        self.point()
        try:
            worker.body()
        except _Deadlock:
            pass
        except BaseException as exc:
            worker.error = exc
        worker.done = True
        self.back.release()

    def enabled(self) -> list[int]:
        return [
            i
            for i, w in enumerate(self.workers)
            if not w.done and (w.event or not w.waiting_for_event)
        ]

    def run(self) -> None:
        current = 0
        while True:
            enabled = self.enabled()
            if not enabled:
                if all(w.done for w in self.workers):
                    return
                self._abort()
                raise AssertionError("lost wake-up: every side waits and no event is pending")
            step = len(self.choices)
            if step < len(self.schedule):
                chosen = self.schedule[step]
            else:
                chosen = current if current in enabled else enabled[0]
            self.choices.append((chosen, enabled, current))
            current = chosen
            self.workers[chosen].go.release()
            self.back.acquire()
            if not self.aborting:
                try:
                    self.check_no_lost_wake_up()
                except AssertionError:
                    self._abort()
                    raise
            error = self.workers[chosen].error
            if error is not None:
                self._abort()
                raise error

    def _abort(self) -> None:
        self.aborting = True
        for worker in self.workers:
            if not worker.done:
                worker.go.release()
        for worker in self.workers:
            assert worker.thread is not None
            worker.thread.join()


class _SteppingLib:
    """The native library, with a scheduling point before every shared-memory access.

    The two compound operations (a whole write; publishing a read) are replayed here as the
    sequence of primitive steps their C code performs, in the same order, so that the search
    interleaves the other side between them: that is where lost wake-ups hide.
    """

    def __init__(self, real: Any, controller: Controller) -> None:
        self._real = real
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        function = getattr(self._real, name)

        def step(*args: Any) -> Any:
            self._controller.point()
            return function(*args)

        return step

    def _take_notify(self, page: Any, notify_offset: int, bit: int) -> int:
        self.vchan_full_barrier()
        previous: int = self.vchan_fetch_and_u8(page, notify_offset, ~bit & 0xFF)
        return int(previous & bit != 0)

    def vchan_ring_write(
        self,
        page: Any,
        ring: Any,
        size: int,
        prod: int,
        prod_offset: int,
        cons_offset: int,
        notify_offset: int,
        src: Any,
        length: int,
    ) -> int:
        cons: int = self.vchan_load_acquire_u32(page, cons_offset)
        used = (prod - cons) & 0xFFFFFFFF
        if used > size:
            return -1 - used
        count = min(size - used, length)
        if count == 0:
            return 0
        start = prod & (size - 1)
        first = min(size - start, count)
        ffi = trio_vchan._native.ffi
        ffi.memmove(ring + start, src, first)
        ffi.memmove(ring, src + first, count - first)
        self.vchan_store_release_u32(page, prod_offset, (prod + count) & 0xFFFFFFFF)
        self._controller.published()
        return (count << 1) | self._take_notify(page, notify_offset, 1)

    def vchan_ring_consumed(
        self, page: Any, cons_offset: int, cons: int, notify_offset: int
    ) -> int:
        self.vchan_full_barrier()
        self.vchan_store_release_u32(page, cons_offset, cons)
        self._controller.published()
        return self._take_notify(page, notify_offset, 2)


# -- the two sides, as the stream drives them ---------------------------------------------------


def sender(ring: RingEndpoint, data: bytes, chunk: int, ctl: Controller, peer: int) -> None:
    view = memoryview(data)
    while view:
        with ctl.operation():
            result = ring.write(view[:chunk])
            if result.notify_peer:
                ctl.notify(peer)
        view = view[result.accepted :]
        if view and not result.accepted and not ring.request_space_notify():
            ctl.wait_event(lambda: ring.buffer_space() > 0)
    with ctl.operation():
        ring.set_live(Live.EXITED)  # close: live byte to 0, then always notify
        ctl.published()
        ctl.point()
        ctl.notify(peer)


def receiver(
    ring: RingEndpoint, out: bytearray, max_bytes: int, ctl: Controller, peer: int
) -> None:
    while True:
        exited = ring.peer_live() is Live.EXITED  # before the ring: no data lost at close
        with ctl.operation():
            result = ring.read(max_bytes)
            if result.notify_peer:
                ctl.notify(peer)
        if result.data:
            out += result.data
        elif exited:
            return
        elif not ring.request_data_notify():
            ctl.wait_event(lambda: ring.data_ready() > 0)


@attrs.frozen
class Scenario:
    orders: RingOrders
    payload: int
    write_chunk: int
    read_chunk: int


SCENARIOS = [
    # a ring that must fill up, wait for space and wrap around
    Scenario(RingOrders(10, 11), payload=1500, write_chunk=1500, read_chunk=700),
    # many small writes and reads: many notify decisions
    Scenario(RingOrders(10, 11), payload=1100, write_chunk=400, read_chunk=1024),
]


def run_once(
    monkeypatch: pytest.MonkeyPatch, scenario: Scenario, schedule: list[int]
) -> Controller:
    pair = make_pair(scenario.orders)
    ctl = Controller(schedule)
    monkeypatch.setattr(trio_vchan._ring, "lib", _SteppingLib(trio_vchan._native.lib, ctl))
    payload = bytes(i % 251 for i in range(scenario.payload))
    received = bytearray()
    ctl.start(
        [
            lambda: sender(pair.client, payload, scenario.write_chunk, ctl, 1),
            lambda: receiver(pair.server, received, scenario.read_chunk, ctl, 0),
        ]
    )
    ctl.run()
    assert bytes(received) == payload, f"schedule {ctl.choices} lost or reordered data"
    return ctl


def explore(monkeypatch: pytest.MonkeyPatch, scenario: Scenario, bound: int) -> Iterator[int]:
    """Depth-first over every schedule with at most ``bound`` preemptions; yields run lengths."""
    stack: list[list[int]] = [[]]
    while stack:
        prefix = stack.pop()
        ctl = run_once(monkeypatch, scenario, prefix)
        yield len(ctl.choices)
        preemptions = sum(
            1
            for chosen, enabled, current in ctl.choices[: len(prefix)]
            if chosen != current and current in enabled
        )
        taken = [c for c, _, _ in ctl.choices]
        for step in range(len(prefix), len(ctl.choices)):
            chosen, enabled, current = ctl.choices[step]
            for other in enabled:
                if other == chosen:
                    continue
                cost = 1 if current in enabled and other != current else 0
                if preemptions + cost <= bound:
                    stack.append([*taken[:step], other])
            if chosen != current and current in enabled:
                preemptions += 1


@pytest.mark.parametrize("scenario", SCENARIOS, ids=["fill-and-wrap", "small-writes"])
def test_every_interleaving_up_to_the_preemption_bound(
    monkeypatch: pytest.MonkeyPatch, scenario: Scenario
) -> None:
    lengths = list(explore(monkeypatch, scenario, PREEMPTION_BOUND))
    print(f"{len(lengths)} schedules, up to {max(lengths)} steps each")
    assert len(lengths) > 100  # the search really branched
