"""SIGKILL either side of a vchan at a random point; the survivor must cope and leak nothing.

The killed side is ``vchan_peer.py`` in its own process, as server or as client, exchanging data
both ways with the survivor, which runs here. The peer dies during the handshake (before it
advertises, or just after the survivor bound or mapped), in the middle of the transfer (after
the survivor received or sent a random number of bytes), or while it closes. Checked each time:

- the survivor's receiving ends with end of stream or BrokenResourceError, and what it received
  is a prefix of what the peer sends; its sending ends, or fails with BrokenResourceError;
- a survivor still in its handshake fails with a clear error, or waits until cancelled;
- afterwards the host holds no grant, mapping or port, XenStore holds no node (except what is
  left of the advertisement of a server killed before it had finished withdrawing it: only
  its domain's toolstack can remove that), and this process has no fd or grant mapping more
  than before.

``TRIO_VCHAN_CRASH_TRIALS`` sets the number of trials (``nox -s crash`` runs 1000) and
``TRIO_VCHAN_CRASH_SEED`` replays a run: the plan of every trial (who dies, when, how much
data) follows from the seed; the exact instant of death is up to the machine.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import attrs
import trio
import trio.testing
from leak_checks import describe_fds, grant_mappings, live_fds
from vchan_peer import pattern

import trio_vchan
from trio_vchan import Backend, ProtocolError, VchanStream
from trio_vchan._backend import EventChannel, EventChannels, GrantMemory, Mapping, Share
from trio_vchan._xenstore import XenStoreClient
from trio_vchan.sim import SimulatedHost

PEER: Final = str(Path(__file__).with_name("vchan_peer.py"))
SERVER, CLIENT = 1, 2
TRIALS: Final = int(os.environ.get("TRIO_VCHAN_CRASH_TRIALS", "20"))
TRIAL_TIMEOUT: Final = 120.0
SIZES: Final = [1, 1024, 2048, 4096, 65536, 1 << 20]
HANDSHAKE: Final = ("before advertising", "at bind", "at map")


def _seed() -> int:
    text = os.environ.get("TRIO_VCHAN_CRASH_SEED")
    return int(text) if text else random.SystemRandom().getrandbits(48)


@attrs.frozen
class Plan:
    """One trial, drawn from the seed."""

    number: int
    killed: str  # the peer's role: "server" or "client"
    phase: str  # "before advertising", "at bind", "at map", "receiving", "sending", "closing"
    total: int  # bytes each way
    at: int  # bytes received or sent by the survivor when the peer dies
    read_size: int  # the survivor's ring sizes when it is the server
    write_size: int

    @classmethod
    def draw(cls, rng: random.Random, number: int) -> Plan:
        killed = rng.choice(["server", "client"])
        phases = ["before advertising", "receiving", "sending", "closing"]
        if killed == "server":
            phases += ["at bind", "at map"]
        phase = rng.choices(phases, [3, 10, 10, 2, 2, 2][: len(phases)])[0]
        total = int(math.exp(rng.uniform(math.log(1), math.log(8 << 20))))
        return cls(
            number,
            killed,
            phase,
            total,
            rng.randrange(total),
            rng.choice(SIZES),
            rng.choice(SIZES),
        )


@attrs.define
class _KillingEvents(EventChannels):
    """The survivor's event channels; the peer dies right after the survivor binds."""

    events: EventChannels
    kill: Callable[[], None]

    def bind_unbound(self, remote_domid: int) -> EventChannel:
        return self.events.bind_unbound(remote_domid)

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> EventChannel:
        channel = self.events.bind_interdomain(remote_domid, remote_port)
        self.kill()
        return channel


@attrs.define
class _KillingMemory(GrantMemory):
    """The survivor's grants; the peer dies right after the survivor maps the shared page."""

    memory: GrantMemory
    kill: Callable[[], None]

    def share(self, remote_domid: int, count: int) -> Share:
        return self.memory.share(remote_domid, count)

    def map(self, remote_domid: int, refs: Sequence[int], *, writable: bool) -> Mapping:
        mapping = self.memory.map(remote_domid, refs, writable=writable)
        self.kill()
        return mapping


@attrs.define
class Survivor:
    """This process's side of one trial."""

    plan: Plan
    process: trio.Process
    expected: bytes
    killed: trio.Event = attrs.Factory(trio.Event)
    all_received: trio.Event = attrs.Factory(trio.Event)
    received: int = 0
    sent: int = 0
    outcome: list[str] = attrs.Factory(list)

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        self.killed.set()

    async def handshake(self, backend: Backend) -> VchanStream | None:
        """Connect or accept; None if the peer's death ended it (it is cancelled if waiting)."""
        plan = self.plan
        port = f"crash{plan.number}"
        result: list[VchanStream | Exception] = []

        async def connect() -> None:
            try:
                if plan.killed == "server":
                    stream = await trio_vchan.open_vchan_stream(SERVER, port, backend=backend)
                else:
                    listener = trio_vchan.VchanListener(
                        CLIENT,
                        port,
                        read_size=plan.read_size,
                        write_size=plan.write_size,
                        backend=backend,
                    )
                    async with listener:
                        stream = await listener.accept()
                result.append(stream)
            except (OSError, ProtocolError) as exc:
                result.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(connect)
            if plan.phase == "before advertising":
                self.kill()
            if plan.phase in HANDSHAKE:
                await self.killed.wait()
                await self.process.wait()
                await trio.testing.wait_all_tasks_blocked()  # the host has seen the death
                if not result:
                    self.outcome.append("handshake waiting, cancelled")
                    nursery.cancel_scope.cancel()
        if not result:
            return None
        if isinstance(result[0], Exception):
            self.outcome.append(f"handshake failed: {type(result[0]).__name__}")
            return None
        self.outcome.append("connected")
        return result[0]

    async def transfer(self, stream: VchanStream) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, stream)
            nursery.start_soon(self._send, stream)
            if self.plan.phase == "closing":
                await self.all_received.wait()  # the peer is closing or exiting now
                self.kill()
            await self.killed.wait()
            await self.process.wait()
        if self.plan.phase == "closing":  # it died only after sending everything
            assert self.received == self.plan.total, f"{self.received} of {self.plan.total}"

    def _crossed(self, count: int, phase: str) -> None:
        if self.plan.phase == phase and count >= self.plan.at:
            self.kill()

    async def _receive(self, stream: VchanStream) -> None:
        self._crossed(0, "receiving")
        try:
            while data := await stream.receive_some():
                end = self.received + len(data)
                assert data == self.expected[self.received : end], (
                    f"bytes {self.received}..{end} differ from what the peer sent"
                )
                self.received = end
                self._crossed(end, "receiving")
                if end == self.plan.total:
                    self.all_received.set()
        except trio.BrokenResourceError as exc:
            self.outcome.append(f"receive broken ({type(exc.__cause__).__name__})")
        else:
            self.outcome.append("receive: end of stream")
        self.all_received.set()  # (already, unless the stream ended early)
        if not self.killed.is_set():  # the peer finished first; kill what is left of it
            self.kill()

    async def _send(self, stream: VchanStream) -> None:
        self._crossed(0, "sending")
        try:
            for piece in pattern(self.plan.total):
                await stream.send_all(piece)
                self.sent += len(piece)
                self._crossed(self.sent, "sending")
        except trio.BrokenResourceError as exc:
            if exc.__cause__ is not None and not isinstance(exc.__cause__, ProtocolError):
                raise
            self.outcome.append("send broken")
        else:
            self.outcome.append("send done")


async def remove_stale_advertisement(sim: SimulatedHost) -> list[str]:
    """As the toolstack of the dead server's domain would: returns what was there."""
    stale = [leak for leak in sim.leaks() if leak.startswith("xenstore node ")]
    if stale:
        dom0 = sim.backend(0)
        try:
            async with XenStoreClient(await dom0.connect_xenstore()) as xs:
                await xs.rm(f"/local/domain/{SERVER}/data/vchan")
        finally:
            dom0.close()
    return stale


async def run_trial(
    sim: SimulatedHost, backends: dict[int, Backend], plan: Plan
) -> tuple[str, bytes]:
    """Returns the survivor's outcome and what the peer printed before it died."""
    survivor_domid = CLIENT if plan.killed == "server" else SERVER
    role = ["serve", CLIENT] if plan.killed == "server" else ["connect", SERVER]
    process = await trio.lowlevel.open_process(
        [sys.executable, PEER, *map(str, role), f"crash{plan.number}", "exchange", str(plan.total)],
        env=os.environ | sim.environ(SERVER if plan.killed == "server" else CLIENT),
        stdout=-1,  # subprocess.PIPE: its lines are not needed, only its death
    )
    expected = b"".join(pattern(plan.total))
    survivor = Survivor(plan, process, expected)
    backend = backends[survivor_domid]
    if plan.phase == "at bind":
        backend = attrs.evolve(backend, events=_KillingEvents(backend.events, survivor.kill))
    elif plan.phase == "at map":
        backend = attrs.evolve(backend, memory=_KillingMemory(backend.memory, survivor.kill))
    try:
        stream = await survivor.handshake(backend)
        if stream is not None:
            async with stream:
                await survivor.transfer(stream)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        assert process.stdout is not None
        printed = b""
        while chunk := await process.stdout.receive_some():
            printed += chunk
        await process.stdout.aclose()
    return ", ".join(survivor.outcome), printed


async def test_sigkill_at_random_points(sim: SimulatedHost) -> None:
    seed = _seed()
    print(f"crash trials: seed {seed} (TRIO_VCHAN_CRASH_SEED={seed} replays the plans)")
    rng = random.Random(seed)
    backends = {SERVER: sim.backend(SERVER), CLIENT: sim.backend(CLIENT)}
    outcomes: Counter[str] = Counter()
    stale_advertisements = 0
    started = time.monotonic()
    try:
        await trio.testing.wait_all_tasks_blocked()
        fds_before = live_fds()
        for number in range(TRIALS):
            plan = Plan.draw(rng, number)
            try:
                with trio.fail_after(TRIAL_TIMEOUT):
                    outcome, printed = await run_trial(sim, backends, plan)
                    await trio.testing.wait_all_tasks_blocked()
                outcomes[f"{plan.killed} killed {plan.phase}: {outcome}"] += 1
                if plan.killed == "server" and b"connected" not in printed:
                    # It died before its withdrawal was complete: a toolstack's job now.
                    stale_advertisements += bool(await remove_stale_advertisement(sim))
                    await trio.testing.wait_all_tasks_blocked()  # the host saw us hang up
                leaks = sim.leaks()
                assert leaks == [], f"left behind: {leaks}"
                left_open = live_fds() - fds_before
                assert not left_open, f"fds left open: {describe_fds(left_open)}"
                assert grant_mappings() == 0, "grant pages still mapped"
            except Exception as exc:
                raise AssertionError(f"crash trial {number} of seed {seed}: {plan}") from exc
    finally:
        for backend in backends.values():
            backend.close()
    elapsed = time.monotonic() - started
    print(f"crash trials: {TRIALS} in {elapsed:.1f} s; stale advertisements {stale_advertisements}")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {count:6} {outcome}")
