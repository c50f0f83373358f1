"""Every interleaving of the two sides' shared-memory steps, for small rings (a model checker).

Both sides are real VchanStreams over real RingEndpoints, each in its own thread and its own
trio.run, but only one thread moves at a time: the shipped C steps, compiled with a hook before
every access to the shared page (tests/stepping_native.py), make each access a scheduling point,
and a controller decides who takes the next step. Only the event channel is a model: a pending
flag per side, set by ``notify()``, consumed by a wait. A depth-first search replays the run with
every alternative choice, as a stateless model checker does, bounded by the number of preemptions
(switching away from a side that could have continued), which is what makes the search finite and
still finds the races that need few preemptions (the lost wake-ups and the data lost at close
found in libxenvchan by talex5/spec-vchan need two). Checked in every run: no lost wake-up (both
sides asleep with work pending), every byte delivered once and in order, end of stream only after
the last byte.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterator

import attrs
import pytest
import stepping_native
import trio
from ring_pairs import make_pair

from trio_vchan._backend import ChannelStatus
from trio_vchan._handshake import Endpoint
from trio_vchan._layout import Live, RingOrders, Role
from trio_vchan._ring import RingEndpoint
from trio_vchan._stream import VchanStream

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
    released: bool = False  # its endpoint (and so its port) is gone
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

    def step(self, kind: int) -> None:
        """The hook of the C steps (it must not raise: it returns into C)."""
        worker: _Worker | None = getattr(self.local, "worker", None)
        if worker is None or self.checking:
            return  # the controller itself (setup), or an invariant check: not a step
        if kind == stepping_native.PUBLISHED:
            worker.deciding = True  # an index is out; the notify decision is still to come
        elif kind == stepping_native.QUIET:
            worker.deciding = False
        else:
            self.point()

    def point(self) -> None:
        worker: _Worker = self.local.worker
        if self.aborting:
            return  # run freely to the next wait, which ends the worker
        self.back.release()
        worker.go.acquire()

    def notify(self, target: int) -> None:
        self.workers[target].event = True
        worker: _Worker | None = getattr(self.local, "worker", None)
        if worker is not None:
            worker.deciding = False

    def wait_event(self, satisfiable: Callable[[], bool]) -> None:
        """Sleep until an event arrives; ``satisfiable`` says whether the wait could end now."""
        worker: _Worker = self.local.worker
        worker.satisfiable = satisfiable
        worker.waiting_for_event = True
        self.point()
        if self.aborting:
            raise _Deadlock
        worker.event = False
        worker.waiting_for_event = False

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
        for worker in self.workers:
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
            worker.thread.join(10)
            assert not worker.thread.is_alive(), "a worker did not stop after the abort"


# -- the event channel, the one modelled part ----------------------------------------------------


@attrs.define
class _Channel:
    """One side's port: ``notify()`` sets the peer's pending flag; the port's status follows the
    peer's release, as EVTCHN_STATUS does."""

    ctl: Controller
    me: int
    peer: int

    @property
    def port(self) -> int:
        return self.me + 1

    def notify(self) -> None:
        self.ctl.notify(self.peer)

    def consume(self) -> tuple[int, ...]:
        return ()

    def fileno(self) -> int:
        return -1

    def status(self) -> ChannelStatus:
        released = self.ctl.workers[self.peer].released
        return ChannelStatus.PEER_CLOSED if released else ChannelStatus.CONNECTED

    def close(self) -> None:
        self.ctl.workers[self.me].released = True


@attrs.define
class _Notifier:
    """The stream's Notifier over the modelled channel: a wait sleeps in the controller until
    this side's pending flag is set, then consumes it."""

    ctl: Controller
    satisfiable: Callable[[], bool]
    generation: int = 0

    def token(self) -> int:
        return self.generation

    async def wait(self, after: int) -> bool:
        if self.generation != after:
            return False
        self.ctl.wait_event(self.satisfiable)
        self.generation += 1
        return True

    def interrupt(self) -> None:
        self.generation += 1

    def close(self) -> None:
        pass


def _stream(ctl: Controller, ring: RingEndpoint, me: int, needs: int) -> VchanStream:
    """A stream whose waits need ``needs`` bytes of data (0: it waits for space only)."""
    endpoint = Endpoint(ring.role, ring, _Channel(ctl, me, 1 - me), [], "/interleavings", 0)
    stream = VchanStream(endpoint)

    def satisfiable() -> bool:
        if not needs:
            return ring.buffer_space() > 0
        return ring.data_ready() >= needs or ring.peer_live() is Live.EXITED

    stream._notifier = _Notifier(ctl, satisfiable)  # type: ignore[assignment]
    return stream


# -- the two sides, as a user drives the streams -------------------------------------------------


async def send_all_then_close(stream: VchanStream, data: bytes, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        await stream.send_all(data[start : start + chunk])
    await stream.aclose()


async def send_nowait_then_close(stream: VchanStream, data: bytes, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        message = data[start : start + chunk]
        try:
            stream.send_nowait(message)
        except trio.WouldBlock:
            await stream.send_all(message)
    await stream.aclose()


async def receive_some(stream: VchanStream, out: bytearray, chunk: int) -> None:
    while data := await stream.receive_some(chunk):
        out += data


async def receive_into(stream: VchanStream, out: bytearray, chunk: int) -> None:
    buffer = bytearray(chunk)
    while count := await stream.receive_into(buffer):
        out += buffer[:count]


async def receive_exactly(stream: VchanStream, out: bytearray, chunk: int) -> None:
    while True:
        try:
            out += await stream.receive_exactly(chunk)
        except EOFError as end:
            out += end.partial  # type: ignore[attr-defined]
            return


Sender = Callable[[VchanStream, bytes, int], Awaitable[None]]
Receiver = Callable[[VchanStream, bytearray, int], Awaitable[None]]


@attrs.frozen
class Scenario:
    orders: RingOrders
    payload: int
    write_chunk: int
    read_chunk: int
    sender: Sender = send_all_then_close
    receiver: Receiver = receive_some
    bound: int = PREEMPTION_BOUND
    #: The copies go in the rings' quarter steps, as shipped; else a whole ring per step (the
    #: same code with fewer steps, so that the larger scenarios stay quick).
    steps: bool = False


SCENARIOS = {
    # a ring that must fill up, wait for space and wrap around
    "fill-and-wrap": Scenario(RingOrders(10, 11), payload=1500, write_chunk=1500, read_chunk=700),
    # many small writes and reads: many notify decisions
    "small-writes": Scenario(RingOrders(10, 11), payload=1100, write_chunk=400, read_chunk=1024),
    # whole messages each way, and a receiver that waits for a count rather than any data
    "messages": Scenario(
        RingOrders(10, 11),
        payload=1000,
        write_chunk=300,
        read_chunk=300,
        sender=send_nowait_then_close,
        receiver=receive_exactly,
        bound=min(PREEMPTION_BOUND, 2),
    ),
    "receive-into": Scenario(
        RingOrders(10, 11),
        payload=1300,
        write_chunk=700,
        read_chunk=500,
        receiver=receive_into,
        bound=min(PREEMPTION_BOUND, 2),
    ),
    # large copies in quarter-ring steps, each side told after the first step it waited for
    # (receive_some caps its copy in Python, receive_into in the C step)
    **{
        name: Scenario(
            RingOrders(10, 11),
            payload=1100,
            write_chunk=1100,
            read_chunk=1024,
            receiver=receiver,
            bound=min(PREEMPTION_BOUND, 2),
            steps=True,
        )
        for name, receiver in (("steps", receive_some), ("steps-into", receive_into))
    },
}


def whole_ring_steps(ring: RingEndpoint) -> None:
    """Copy a whole ring per step (C steps, read's cap) instead of a quarter."""
    ring._end.read_step = ring._end.write_step = 0  # 0: all at once


def run_once(
    monkeypatch: pytest.MonkeyPatch, scenario: Scenario, schedule: list[int]
) -> Controller:
    ctl = Controller(schedule)
    with stepping_native.use(monkeypatch, ctl.step):
        pair = make_pair(scenario.orders)
        if not scenario.steps:
            whole_ring_steps(pair.client)
            whole_ring_steps(pair.server)
        # worker 0 is the client (it sends), worker 1 the server (it receives)
        sender = _stream(ctl, pair.client, 0, needs=0)
        exact = scenario.receiver is receive_exactly
        receiver = _stream(ctl, pair.server, 1, needs=scenario.read_chunk if exact else 1)
        payload = bytes(i % 251 for i in range(scenario.payload))
        received = bytearray()
        ctl.start(
            [
                lambda: trio.run(scenario.sender, sender, payload, scenario.write_chunk),
                lambda: trio.run(scenario.receiver, receiver, received, scenario.read_chunk),
            ]
        )
        ctl.run()
    assert bytes(received) == payload, f"schedule {ctl.choices} lost or reordered data"
    assert pair.server.role is Role.SERVER
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


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_every_interleaving_up_to_the_preemption_bound(
    monkeypatch: pytest.MonkeyPatch, scenario: Scenario
) -> None:
    lengths = list(explore(monkeypatch, scenario, scenario.bound))
    print(f"{len(lengths)} schedules, up to {max(lengths)} steps each")
    assert len(lengths) > 100  # the search really branched


def test_the_checker_sees_every_access_of_the_c_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook really runs inside the shipped steps: one send is its four accesses (the peer's
    live byte, its cons, our prod, our notify byte)."""
    kinds: list[int] = []
    with stepping_native.use(monkeypatch, kinds.append):
        pair = make_pair(RingOrders(10, 11))
        kinds.clear()
        pair.client.write(b"abc")
    assert kinds.count(stepping_native.ACCESS) == 4
    assert stepping_native.PUBLISHED in kinds
