"""A domain in another process, driven over its stdin/stdout, for the simulated host's tests.

Run as ``python tests/sim_agent.py`` with ``host.environ(domid)``: it joins the host with
``backend_from_environ()`` and answers one JSON request per line with one JSON reply per
line. :class:`Agent` is the test side.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

AGENT = Path(__file__).resolve()
Json = dict[str, Any]


class _AgentState:
    """The child's objects, by id."""

    def __init__(self) -> None:
        from trio_vchan.sim import backend_from_environ

        self.backend = backend_from_environ()
        self.objects: dict[int, Any] = {}
        self.next_id = 1
        self.xs: Any = None

    def keep(self, obj: object) -> int:
        self.next_id += 1
        self.objects[self.next_id] = obj
        return self.next_id

    async def xenstore(self) -> Any:
        from trio_vchan._xenstore import XenStoreClient

        if self.xs is None:
            self.xs = XenStoreClient(await self.backend.connect_xenstore())
        return self.xs

    async def handle(self, request: Json) -> Json:
        op = request.pop("op")
        obj: Any = self.objects.get(request.pop("id", 0))
        if op == "bind_unbound":
            ch = self.backend.events.bind_unbound(request["remote"])
            return {"id": self.keep(ch), "port": ch.port}
        if op == "bind_interdomain":
            ch = self.backend.events.bind_interdomain(request["remote"], request["port"])
            return {"id": self.keep(ch), "port": ch.port}
        if op == "notify":
            obj.notify()
            return {}
        if op == "consume":
            obj.consume()
            return {}
        if op == "readable":
            return {"readable": bool(select.select([obj.fileno()], [], [], 0)[0])}
        if op == "wait":
            with trio.fail_after(60):
                await trio.lowlevel.wait_readable(obj.fileno())
            return {}
        if op == "peer_closed":
            return {"peer_closed": obj.peer_closed}
        if op == "share":
            share = self.backend.memory.share(request["remote"], request["count"])
            return {"id": self.keep(share), "refs": list(share.refs)}
        if op == "map":
            mapping = self.backend.memory.map(
                request["remote"], request["refs"], writable=request["writable"]
            )
            return {"id": self.keep(mapping)}
        if op == "write":
            data = bytes.fromhex(request["hex"])
            obj.buffer[request["offset"] : request["offset"] + len(data)] = data
            return {}
        if op == "read":
            return {"hex": bytes(obj.buffer[request["offset"] : request["end"]]).hex()}
        if op == "unmap_notify":
            obj.set_unmap_notify(request["offset"], request["port"])
            return {}
        if op == "close":
            obj.close()
            return {}
        if op == "exit":
            if self.xs is not None:
                await self.xs.aclose()
            self.backend.close()
            sys.exit(0)
        return await self.handle_xenstore(op, request)

    async def handle_xenstore(self, op: str, request: Json) -> Json:
        from trio_vchan._xs_wire import Permission

        xs = await self.xenstore()
        if op == "xs_write":
            await xs.write(request["path"], request["value"].encode())
            return {}
        if op == "xs_read":
            return {"value": (await xs.read(request["path"])).decode()}
        if op == "xs_rm":
            await xs.rm(request["path"])
            return {}
        if op == "xs_set_perms":
            await xs.set_perms(request["path"], [Permission.parse(p) for p in request["perms"]])
            return {}
        if op == "xs_watch":
            await xs.watch(request["path"], request["token"])
            return {}
        if op == "xs_next_event":
            with trio.fail_after(60):
                event = await xs.next_watch_event()
            return {"path": event.path, "token": event.token}
        raise ValueError(f"unknown op {op!r}")


async def _agent_main() -> None:
    state = _AgentState()
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = await stdin.receive_some()
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        try:
            reply = await state.handle(json.loads(line))
        except OSError as exc:
            reply = {"errno": exc.errno, "message": str(exc)}
        except (ValueError, TypeError, BufferError) as exc:
            reply = {"exception": type(exc).__name__, "message": str(exc)}
        print(json.dumps(reply), flush=True)


class AgentError(Exception):
    """The agent's request failed; ``reply`` says how."""

    def __init__(self, reply: Json) -> None:
        super().__init__(reply.get("message", reply))
        self.reply = reply


class Agent:
    """The test's handle on one agent process."""

    def __init__(self, process: trio.Process, domid: int) -> None:
        self.process = process
        self.domid = domid
        self._buffer = b""

    async def call(self, op: str, **args: Any) -> Json:
        """Send one request and return its reply; raise AgentError for a failed one."""
        reply = await self.try_call(op, **args)
        if "errno" in reply or "exception" in reply:
            raise AgentError(reply)
        return reply

    async def try_call(self, op: str, **args: Any) -> Json:
        """Send one request and return its reply, failed or not."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        with trio.fail_after(60):
            await self.process.stdin.send_all(json.dumps({"op": op, **args}).encode() + b"\n")
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some()
                if not chunk:
                    raise EOFError(f"agent of domain {self.domid} exited")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: Json = json.loads(line)
        return reply

    async def exit(self) -> None:
        """Ask the agent to close everything and exit; check that it exited cleanly."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b'{"op": "exit"}\n')
        with trio.fail_after(60):
            assert await self.process.wait() == 0

    async def kill(self) -> None:
        """SIGKILL the agent and reap it."""
        self.process.kill()
        with trio.fail_after(60):
            await self.process.wait()


@asynccontextmanager
async def agent(environ: Callable[[int], dict[str, str]], domid: int) -> AsyncIterator[Agent]:
    """Run an agent as ``domid`` (``environ`` is ``host.environ``); kill it on the way out."""
    process = await trio.lowlevel.open_process(
        [sys.executable, os.fspath(AGENT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, **environ(domid)},
    )
    try:
        yield Agent(process, domid)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True), trio.fail_after(60):
            await process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                await pipe.aclose()


if __name__ == "__main__":
    trio.run(_agent_main)
