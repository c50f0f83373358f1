"""The domU's test agent: runs the commands dom0's tests post in XenStore.

The domU has no disk and no network, so XenStore is the control channel (through the project's
own client and the xenbus device). Under ``/local/domain/<domid>/data/agent``:

- ``cmd/<id>``: dom0 writes ``{"argv": [...], "timeout": seconds}`` to run a program, or
  ``{"peer": [...], "timeout": seconds}`` to run ``xen_peer.run(...)`` as a task of the agent
  itself (a fresh Python under emulation takes seconds to start; a task starts at once, and
  many vchans in one long-lived process is a good test too).
- ``kill/<id>``: dom0 writes a signal number; the agent sends it to job ``<id>``.
- ``result/<id>``: the agent writes ``{"rc", "timed_out", "stdout", "stderr"}`` (tails) when
  the job ends; a job past its timeout is killed (every step in the domU is bounded).
- ``ready``: written once the agent watches for commands; ``quit``: dom0 asks it to exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from typing import Any, Final

import attrs
import trio
import xen_peer

from trio_vchan._errors import XenStoreError
from trio_vchan._linux._xenbus import connect_xenstore, find_xenstore
from trio_vchan._xenstore import XenStoreClient

# XenStore values are limited to 2048 bytes; keep whole results below that.
STDOUT_TAIL: Final = 1000
STDERR_TAIL: Final = 600


@attrs.define
class Job:
    id: str
    process: trio.Process | None = None


def tail(fd: int, limit: int) -> str:
    size = os.fstat(fd).st_size
    return os.pread(fd, limit, max(0, size - limit)).decode("utf-8", "replace")


def log(message: str) -> None:
    with open("/proc/uptime") as uptime:
        now = uptime.read().split()[0]
    print(f"[agent {now}s] {message}", file=sys.stderr, flush=True)


async def run_task(argv: list[str], time_limit: float) -> dict[str, Any]:
    """Run a trio-vchan peer in this process; the result looks like a process's."""
    result: dict[str, Any] = {"rc": 0, "timed_out": False, "stdout": "", "stderr": ""}
    try:
        with trio.fail_after(time_limit):
            result["stdout"] = json.dumps(await xen_peer.run(argv))
    except trio.TooSlowError:
        result |= {"rc": 3, "timed_out": True}
    except Exception:
        result |= {"rc": 1, "stderr": traceback.format_exc()[-STDERR_TAIL:]}
    return result


async def run_job(xs: XenStoreClient, base: str, job: Job, spec: dict[str, Any]) -> None:
    timeout = float(spec.get("timeout", 120))
    if "peer" in spec:
        argv = [str(a) for a in spec["peer"]]
        log(f"job {job.id}: task {' '.join(argv)}")
        result = await run_task(argv, timeout)
    else:
        argv = [str(a) for a in spec["argv"]]
        log(f"job {job.id}: {' '.join(argv)}")
        result = await run_process(job, argv, timeout)
    status = " (timed out)" if result["timed_out"] else ""
    log(f"job {job.id}: rc {result['rc']}{status} {result['stdout'][-200:]!r}")
    if result["rc"]:
        log(f"job {job.id}: stderr {result['stderr']}")
    await xs.write(f"{base}/result/{job.id}", json.dumps(result).encode())


async def run_process(job: Job, argv: list[str], time_limit: float) -> dict[str, Any]:
    """Run a program, bounded by ``time_limit``; return its exit code and its output's tails."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    out = os.open(f"/tmp/job-{job.id}.out", flags)
    err = os.open(f"/tmp/job-{job.id}.err", flags)
    try:
        try:
            job.process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        except OSError as exc:
            result: dict[str, Any] = {
                "rc": 127,
                "timed_out": False,
                "stdout": "",
                "stderr": str(exc),
            }
        else:
            with trio.move_on_after(time_limit) as scope:
                await job.process.wait()
            if scope.cancelled_caught:
                job.process.kill()
                await job.process.wait()
            result = {
                "rc": job.process.returncode,
                "timed_out": scope.cancelled_caught,
                "stdout": tail(out, STDOUT_TAIL),
                "stderr": tail(err, STDERR_TAIL),
            }
    finally:
        os.close(out)
        os.close(err)
    return result


async def main() -> None:
    location = find_xenstore(os.environ)
    assert location is not None, "no XenStore"
    async with XenStoreClient(await connect_xenstore(*location)) as xs:
        domid = int(await xs.read("domid"))
        base = f"/local/domain/{domid}/data/agent"
        for directory in ("cmd", "kill", "result"):
            await xs.mkdir(f"{base}/{directory}")  # children dom0 writes inherit our ownership
        for directory in ("cmd", "kill", "quit"):
            await xs.watch(f"{base}/{directory}", directory)
        await xs.write(f"{base}/ready", b"1")
        log(f"ready at {base}")
        jobs: dict[str, Job] = {}
        async with trio.open_nursery() as nursery:
            while True:
                event = await xs.next_watch_event()
                if event.token == "quit" and await exists(xs, f"{base}/quit"):
                    nursery.cancel_scope.cancel()
                    break
                if event.token == "cmd":
                    for id in await xs.directory(f"{base}/cmd"):
                        if id not in jobs:
                            jobs[id] = Job(id)
                            spec = json.loads(await xs.read(f"{base}/cmd/{id}"))
                            nursery.start_soon(run_job, xs, base, jobs[id], spec)
                if event.token == "kill":
                    for id in await xs.directory(f"{base}/kill"):
                        number = int(await xs.read(f"{base}/kill/{id}"))
                        await xs.rm(f"{base}/kill/{id}")
                        process = jobs[id].process if id in jobs else None
                        if process is not None and process.returncode is None:
                            log(f"job {id}: sending {signal.Signals(number).name}")
                            process.send_signal(number)
    log("quit")


async def exists(xs: XenStoreClient, path: str) -> bool:
    try:
        await xs.read(path)
    except XenStoreError:
        return False
    return True


if __name__ == "__main__":
    trio.run(main)
