"""Drives ``hostile_peer.py``, a hostile domain in a process of its own, one command at a time."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from trio_vchan.sim import SimulatedHost

HOSTILE_PEER: Final = str(Path(__file__).with_name("hostile_peer.py"))
#: A command is answered well within this, or the peer hung.
STEP_TIMEOUT: Final = 60.0
Json = dict[str, Any]


@attrs.define
class HostilePeer:
    """The driver's end of ``hostile_peer.py``: one command, one reply."""

    process: trio.Process
    buffer: bytes = b""

    async def call(self, op: str, **args: Any) -> Json:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        await self.process.stdin.send_all(json.dumps({"op": op, **args}).encode() + b"\n")
        while b"\n" not in self.buffer:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                code = await self.process.wait()
                raise RuntimeError(f"the hostile peer exited with {code} during {op!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        reply: Json = json.loads(line)
        return reply


@asynccontextmanager
async def hostile_peer(sim: SimulatedHost, domid: int) -> AsyncIterator[HostilePeer]:
    """``hostile_peer.py`` as domain ``domid``; at the end it releases everything and exits."""
    process = await trio.lowlevel.open_process(
        [sys.executable, HOSTILE_PEER],
        env=os.environ | sim.environ(domid),
        stdin=-1,  # subprocess.PIPE
        stdout=-1,
    )
    try:
        peer = HostilePeer(process)
        with trio.fail_after(STEP_TIMEOUT):
            await peer.call("ping")  # it has joined the host: its connection is in the baseline
        yield peer
    finally:
        assert process.stdin is not None
        assert process.stdout is not None
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            await process.stdin.aclose()  # end of input: the peer releases everything and exits
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdout.aclose()
