"""A hostile domain to point at a vchan server: the driver of its process, and the attack.

The domain itself is :mod:`._hostile_process`, a process of its own that does the handshake
by hand (through the backend and XenStore, never trio-vchan's handshake or stream) and then
writes whatever it likes into the shared page and the rings. :class:`HostilePeer` sends it
one command at a time; :func:`attack_server` runs whole episodes of them against a server.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, final

import attrs
import trio

from .._handshake import vchan_path
from .._xenstore import XenStoreClient
from ..sim import SimulatedHost
from ._host import HostHarness

#: How soon a server that dropped a connection offers the port afresh (see attack_server).
OFFER_GRACE: Final = 5.0
#: A command is answered well within this, or the hostile process hung.
STEP_TIMEOUT: Final = 60.0
COMMAND: Final = [sys.executable, "-m", "trio_vchan.testing._hostile_process"]
#: Where the process starts: the directory holding this very trio_vchan, which ``-m`` puts
#: first on the process's path, so that it runs the same package (not a source tree that the
#: current directory may hold, whose compiled part is not built).
PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[2])


class ServerMisbehaved(AssertionError):
    """What a hostile peer must never be able to make a vchan server do, it did."""


@attrs.frozen
class Mutations:
    """What one :meth:`HostilePeer.mutate` or :meth:`HostilePeer.quiet` did."""

    #: Descriptions of the mutations made (for ``quiet``, only how many).
    done: list[str]
    #: Bytes the victim changed since the previous command although the protocol gives it no
    #: right to: the peer's indices and live byte, the orders and grant refs, the ring the
    #: victim reads, the unused parts of the page. Empty for a correct victim. When there
    #: are some, nothing was mutated.
    violations: list[str]
    #: With violations: whether the victim had closed its end of the event channel, so that
    #: it ended this vchan before it wrote (a server offering the same pages afresh).
    dropped: bool = False


@final
class HostilePeer:
    """A hostile domain in a process of its own, one command at a time.

    Get one from :func:`hostile_peer`. The victim is the other end, a domain of the same
    simulated host; ``seed`` makes everything the peer does reproducible.
    """

    def __init__(self, process: trio.Process, domid: int) -> None:
        self._process = process
        self._buffer = b""
        self._busy = False  # a command is under way (its caller may have been cancelled)
        self._domid = domid

    @property
    def domid(self) -> int:
        """The hostile domain's id."""
        return self._domid

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one command of the hostile process's protocol and return its reply.

        The typed methods below cover the attacks; the protocol's other commands (``pin``,
        ``stall``, ``unpin``, ``close_port``, ``ping``) are described in
        ``trio_vchan/testing/_hostile_process.py``.

        Raises:
            RuntimeError: the hostile process exited.
        """
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._busy = True
        await self._process.stdin.send_all(json.dumps({"op": op, **args}).encode() + b"\n")
        while b"\n" not in self._buffer:
            chunk = await self._process.stdout.receive_some()
            if not chunk:
                code = await self._process.wait()
                raise RuntimeError(f"the hostile peer exited with status {code} during {op!r}")
            self._buffer += chunk
        self._busy = False
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def attach(
        self, server_domid: int, path: str, *, seed: int, honest: bool = False
    ) -> list[str]:
        """Connect as the client of ``server_domid``'s vchan at XenStore ``path``, waiting for
        its advertisement; unless ``honest``, sometimes with bad initial indices, live or
        notify bytes, and sometimes without setting ``cli_live`` or sending the event.

        Returns:
            What it did wrong (empty for an honest setup).
        """
        reply = await self.call("attach", seed=seed, victim=server_domid, path=path, honest=honest)
        notes: list[str] = reply["notes"]
        return notes

    async def serve(
        self, client_domid: int, path: str, *, seed: int, honest: bool = False
    ) -> list[str]:
        """Advertise a vchan for ``client_domid`` at XenStore ``path``; unless ``honest``,
        sometimes with bad orders, grant refs (of pages that do not exist or are granted to
        another domain), indices, live or notify bytes. Returns once it is advertised.

        Returns:
            What it did wrong (empty for an honest setup).
        """
        reply = await self.call("serve", seed=seed, victim=client_domid, path=path, honest=honest)
        notes: list[str] = reply["notes"]
        return notes

    async def mutate(self, count: int) -> Mutations:
        """Make ``count`` mutations of the connected vchan, as the seed says: writes and reads
        that follow the protocol, arbitrary indices, orders, live and notify bytes and grant
        refs, garbage in both rings, floods of events, closing the event channel, leaving.
        It stops early once the victim has closed its end of the event channel (the victim
        may be offering the same pages afresh), and mutates nothing while the last command's
        violations stand."""
        reply = await self.call("mutate", count=count)
        return Mutations(reply["done"], reply["violations"], reply["dropped"])

    async def quiet(self, seconds: float) -> Mutations:
        """Mutate for ``seconds`` without sending one event: a victim that waits must stay
        asleep (and use no CPU)."""
        reply = await self.call("quiet", seconds=seconds)
        done = [f"{reply['count']} mutations without events"]
        return Mutations(done, reply["violations"], reply["dropped"])

    async def end(self) -> None:
        """Release everything (the host clears our live byte and notifies the victim, as
        when a domain's process dies) and remove our XenStore nodes."""
        await self.call("end")


async def start_hostile_process(sim: SimulatedHost, domid: int) -> trio.Process:
    """Start :mod:`._hostile_process` as domain ``domid`` of ``sim``, its commands and replies
    on pipes (JSON lines); :class:`HostilePeer` speaks them."""
    return await trio.lowlevel.open_process(
        COMMAND,
        cwd=PACKAGE_ROOT,
        env={**os.environ, **sim.environ(domid)},
        stdin=-1,  # subprocess.PIPE
        stdout=-1,
    )


@asynccontextmanager
async def hostile_peer(host: SimulatedHost | HostHarness, domid: int) -> AsyncIterator[HostilePeer]:
    """Run a hostile domain ``domid`` on ``host`` for the block; at the end it releases
    everything and exits.

    Raises:
        RuntimeError: the hostile process exited before it joined the host.
    """
    sim = host.host if isinstance(host, HostHarness) else host
    process = await start_hostile_process(sim, domid)
    peer = HostilePeer(process, domid)
    try:
        with trio.fail_after(STEP_TIMEOUT):
            await peer.call("ping")  # it has joined the host: its connection is in the baseline
        yield peer
    finally:
        assert process.stdin is not None
        assert process.stdout is not None
        if peer._busy:  # it would finish that command first (waiting for a server, say)
            process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            await process.stdin.aclose()  # end of input: the peer releases everything and exits
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()


@attrs.frozen
class AttackReport:
    """What :func:`attack_server` did to a server that withstood it."""

    seed: int
    episodes: int
    mutations: int
    #: Each episode's setup faults, as :meth:`HostilePeer.attach` returned them.
    setups: list[list[str]]


async def attack_server(
    host: SimulatedHost | HostHarness,
    server_domid: int,
    port: str | int,
    *,
    domid: int,
    episodes: int = 20,
    seed: int | None = None,
    offer_within: float = 30.0,
) -> AttackReport:
    """Attack the vchan server that ``server_domid`` runs for domain ``domid`` on ``port``.

    A hostile peer, domain ``domid`` in a process of its own, connects as the client
    ``episodes`` times; each time it breaks the handshake or not (see
    :meth:`HostilePeer.attach`), makes 5 to 60 steps of mutations (see
    :meth:`HostilePeer.mutate`), and leaves by releasing everything. A correct server:

    - writes nothing but its own fields: its indices, its live byte, the notify bytes and the
      ring it writes (checked after every step);
    - survives each connection: a broken page ends that connection only (trio-vchan's
      streams raise :class:`trio.BrokenResourceError` caused by a
      :class:`~trio_vchan.ProtocolError`, which the server's handler must catch or let
      end its own task), never the server, and never makes it hang or spin;
    - notices that the peer left and offers the port afresh within ``offer_within`` seconds,
      as :class:`~trio_vchan.VchanListener` and :func:`~trio_vchan.serve_vchan` do (so the
      server must keep serving ``domid``; one :func:`~trio_vchan.serve` is not enough).

    The server may run in this process or in another (:meth:`HostHarness.start_process`).

    Args:
        host: the simulated host both domains are in.
        server_domid: the server's domain.
        port: the port, as the server was given it.
        domid: the hostile domain, the one the server serves.
        episodes: how many connections to attack.
        seed: makes the attack reproducible; by default a random one (the report and every
            failure say which).
        offer_within: how many seconds the server may take to offer the port (again); more
            than its handshake timeout, which it may wait out for a client that stalls.

    Returns:
        What was done, for a server that withstood it.

    Raises:
        ServerMisbehaved: the server wrote outside its fields, or did not offer the port
            again within ``offer_within`` seconds (it crashed, hung, or stopped serving).
    """
    if seed is None:
        seed = random.SystemRandom().getrandbits(48)
    path = vchan_path(server_domid, domid, port)
    sim = host.host if isinstance(host, HostHarness) else host
    observer = sim.backend(domid)  # reads XenStore as the hostile domain, in this process
    try:
        async with XenStoreClient(await observer.connect_xenstore()) as xs:
            return await _attack(xs, host, server_domid, path, domid, episodes, seed, offer_within)
    finally:
        observer.close()


async def _offered(xs: XenStoreClient, path: str) -> int | None:
    """The grant ref of the page advertised at ``path`` now, if any."""
    try:
        return int(await xs.read(f"{path}/ring-ref"))
    except (OSError, ValueError):
        return None


async def _attack(
    xs: XenStoreClient,
    host: SimulatedHost | HostHarness,
    server_domid: int,
    path: str,
    domid: int,
    episodes: int,
    seed: int,
    offer_within: float,
) -> AttackReport:
    seeds = random.Random(seed)
    mutations = 0
    setups: list[list[str]] = []
    log: list[str] = []

    def misbehaved(message: str) -> ServerMisbehaved:
        return ServerMisbehaved(
            f"{message}\n(attack_server(..., seed={seed}) replays this attack; episode"
            f" {len(setups)}, last steps:\n  " + "\n  ".join(log[-20:]) + ")"
        )

    async def dropped_us(ours: int) -> bool:
        """Whether the server has offered the port afresh, within a moment: then it dropped
        this connection (a server may offer the same pages again after a broken handshake,
        resetting them under our mapping), and what it writes now is not this vchan's."""
        with trio.move_on_after(OFFER_GRACE):
            async with xs.watching(f"{path}/ring-ref") as changes:
                while await _offered(xs, path) != ours:
                    await changes.wait()
            return True
        return False

    async with hostile_peer(host, domid) as peer:
        for _ in range(episodes + 1):
            episode = random.Random(seeds.getrandbits(64))
            last = len(setups) == episodes  # an honest connection: the server is still there
            reply = None
            with trio.move_on_after(offer_within):
                reply = await peer.call(
                    "attach",
                    seed=episode.getrandbits(64),
                    victim=server_domid,
                    path=path,
                    honest=last,
                )
            if reply is None:
                what = "the attack" if last else f"episode {len(setups) - 1}"
                raise misbehaved(
                    f"the server did not offer {path} again within {offer_within} s after {what}:"
                    " it crashed, hung, or stopped serving"
                    if setups
                    else f"the server did not offer {path} within {offer_within} s"
                )
            notes: list[str] = reply["notes"]
            ours: int = reply["ref"]
            log.append(f"attach: {notes or 'honest setup'}")
            if last:
                await peer.end()
                break
            setups.append(notes)
            for step in range(episode.choice([5, 20, 60]) + 1):
                with trio.fail_after(STEP_TIMEOUT):
                    if step:
                        result = await peer.mutate(episode.choice([1, 1, 2, 3, 5]))
                    else:  # what it wrote after the last step
                        result = await peer.quiet(0)
                mutations += len(result.done) if step else 0
                log.append(f"mutations {result.done}")
                if result.violations:
                    if result.dropped or await dropped_us(ours):
                        log.append("the server offered the port afresh")
                        break
                    raise misbehaved(f"the server wrote outside its fields: {result.violations}")
                if await _offered(xs, path) == ours:  # it dropped us, and offers our page
                    log.append("the server offered the port afresh")
                    break
                # The server runs meanwhile, here or in another process: give it a moment.
                await trio.sleep(episode.choice([0, 0.001, 0.005]))
            await peer.end()
            log.append("end")
    return AttackReport(seed, len(setups), mutations, setups)
