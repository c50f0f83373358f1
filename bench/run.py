"""Run every benchmark in one go and write the results, a table and a plot.

    python bench/run.py [--smoke] [--output DIR] [--docs DIR]

Everything is measured in this one run, so ratios compare like with like: vchan between two
processes on a simulated host against the baselines (Trio over a Unix socketpair between two
processes, and a plain in-process memory copy as the bound). Each figure is the median of
several repetitions. ``--smoke`` runs a seconds-long version that checks the machinery only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

import trio_vchan
from trio_vchan.sim import SimulatedHost

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "workers.py")
SERVER, CLIENT = 1, 2
KIB, MIB = 1 << 10, 1 << 20
WRITE_SIZES = [64, KIB, 64 * KIB, MIB]
RING_SIZES = [2 * KIB, 64 * KIB, MIB]
PING_SIZES = [1, 64]
BUSY_POLL = 50e-6


@attrs.frozen
class Plan:
    repetitions: int
    bytes_per_run: int  # for large writes
    writes_per_run: int  # caps the volume of small writes, so every run takes similar time
    round_trips: int
    scale_counts: tuple[int, ...]
    scale_bytes: int


FULL = Plan(3, 256 * MIB, 200_000, 3000, (1, 10, 100, 1000), 256 * MIB)
SMOKE = Plan(1, 4 * MIB, 2000, 50, (1, 10), 4 * MIB)


def volume(plan: Plan, write: int) -> int:
    return min(plan.bytes_per_run, write * plan.writes_per_run) // write * write


class Runner:
    def __init__(self, host: SimulatedHost) -> None:
        self.host = host
        self.counter = 0

    def port(self) -> str:
        self.counter += 1
        return f"bench{self.counter}"

    async def pair(
        self,
        first: list[str],
        second: list[str],
        env: Sequence[dict[str, str]] = ({}, {}),
        fds: Sequence[tuple[int, ...]] = ((), ()),
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run two workers at once (with extra environment and inherited fds each)."""
        results: list[dict[str, Any]] = [{}, {}]

        async def run(index: int, args: list[str]) -> None:
            done = await trio.run_process(
                [sys.executable, WORKER, *args],
                env=os.environ | env[index],
                capture_stdout=True,
                pass_fds=fds[index],
            )
            results[index] = json.loads(done.stdout)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0, first)
            nursery.start_soon(run, 1, second)
        return results[0], results[1]

    async def vchan(
        self, server: list[str], client: list[str], params: list[str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        port = self.port()
        return await self.pair(
            ["vchan", "serve", str(CLIENT), port, *server, *params],
            ["vchan", "connect", str(SERVER), port, *client, *params],
            (self.host.environ(SERVER), self.host.environ(CLIENT)),
        )

    async def socketpair(
        self, first: list[str], second: list[str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        left, right = socket.socketpair()
        with left, right:
            return await self.pair(
                ["socket", str(left.fileno()), *first],
                ["socket", str(right.fileno()), *second],
                fds=((left.fileno(),), (right.fileno(),)),
            )


def mb_per_s(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e6


def memcpy_rate(write: int, total: int) -> float:
    """The bound: copying the same blocks in memory, in this process."""
    source = memoryview(b"\xa5" * write)
    target = memoryview(bytearray(max(write, MIB)))
    count = max(1, total // write)
    start = time.perf_counter()
    for i in range(count):
        offset = (i * write) % len(target)
        end = min(offset + write, len(target))
        target[offset:end] = source[: end - offset]
    return mb_per_s(count * write, time.perf_counter() - start)


def median(values: list[float]) -> float:
    return statistics.median(values)


async def measure(plan: Plan) -> dict[str, Any]:
    results: dict[str, Any] = {
        "plan": attrs.asdict(plan),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "trio_vchan": trio_vchan.__version__,
        },
        "one_way": [],
        "two_way": [],
        "ping_pong": [],
        "scale": [],
    }
    async with SimulatedHost() as host:
        runner = Runner(host)
        for write in WRITE_SIZES:
            total = volume(plan, write)
            args = [f"total={total}"]
            socket_runs = []
            for _ in range(plan.repetitions):
                _, sink = await runner.socketpair(
                    ["source", *args, f"write={write}"], ["sink", *args]
                )
                socket_runs.append(mb_per_s(total, sink["seconds"]))
            memcpy_runs = [memcpy_rate(write, total) for _ in range(plan.repetitions)]
            for ring in RING_SIZES:
                vchan_runs, duplex_runs = [], []
                for _ in range(plan.repetitions):
                    _, sink = await runner.vchan(
                        ["source", f"write={write}"], ["sink"], [*args, f"ring={ring}"]
                    )
                    vchan_runs.append(mb_per_s(total, sink["seconds"]))
                    server, client = await runner.vchan(
                        ["duplex"], ["duplex"], [*args, f"write={write}", f"ring={ring}"]
                    )
                    duplex_runs.append(
                        mb_per_s(total, server["receive"]["seconds"])
                        + mb_per_s(total, client["receive"]["seconds"])
                    )
                results["one_way"].append(
                    {
                        "write": write,
                        "ring": ring,
                        "vchan_MBps": median(vchan_runs),
                        "socketpair_MBps": median(socket_runs),
                        "memcpy_MBps": median(memcpy_runs),
                        "runs": vchan_runs,
                    }
                )
                results["two_way"].append(
                    {"write": write, "ring": ring, "vchan_MBps": median(duplex_runs)}
                )
            print(f"write {write}: done", file=sys.stderr)
        for size in PING_SIZES:
            params = [f"count={plan.round_trips}", f"size={size}"]
            entry: dict[str, Any] = {"size": size}
            for name, extra in (("vchan", []), ("vchan_busy_poll", [f"busy_poll={BUSY_POLL}"])):
                trips: list[float] = []
                for _ in range(plan.repetitions):
                    _, client = await runner.vchan(["pong"], ["ping"], [*params, *extra])
                    trips.extend(client["round_trips"])
                entry[name] = latency(trips)
            trips = []
            for _ in range(plan.repetitions):
                client, _ = await runner.socketpair(["ping", *params], ["pong", *params])
                trips.extend(client["round_trips"])
            entry["socketpair"] = latency(trips)
            results["ping_pong"].append(entry)
        print("ping-pong: done", file=sys.stderr)
        for count in plan.scale_counts:
            runs = []
            for _ in range(plan.repetitions):
                params = [f"count={count}", f"total={plan.scale_bytes}"]
                # The server is dom0: a guest's XenStore quota (1000 nodes, as C xenstored's)
                # does not hold 1000 advertisements at once.
                _, client = await runner.pair(
                    ["scale", "serve", str(CLIENT), "-", *params],
                    ["scale", "connect", "0", "-", *params],
                    (host.environ(0), host.environ(CLIENT)),
                )
                runs.append(client)
            results["scale"].append(
                {"count": count}
                | {key: median([run[key] for run in runs]) for key in runs[0] if key != "received"}
            )
            print(f"scale {count}: done", file=sys.stderr)
    return results


def latency(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "median_us": statistics.median(ordered) * 1e6,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="a seconds-long check of the machinery"
    )
    parser.add_argument("--output", type=Path, default=HERE, help="where results.json goes")
    parser.add_argument(
        "--docs", type=Path, default=None, help="write performance.md and .png here"
    )
    args = parser.parse_args()
    results = trio.run(measure, SMOKE if args.smoke else FULL)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.docs is not None:
        from report import write_report

        write_report(results, args.docs)


if __name__ == "__main__":
    main()
