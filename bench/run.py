"""Run every benchmark in one go and write the results, a table and a plot.

    python bench/run.py [--smoke] [--setup-only] [--output DIR] [--docs DIR]

Everything is measured in this one run, so ratios compare like with like: vchan between two
processes on a simulated host against the baselines (Trio over a Unix socketpair between two
processes, and a plain in-process memory copy as the bound). Each figure is the median of
several repetitions. Connection setup is measured against Xen's C libxenvchan on the same
simulated host (through the shim of tests/interop, when libxenvchan is installed), the two
taking turns, each repetition giving one ratio. ``--smoke`` runs a seconds-long version that
checks the machinery only; ``--setup-only`` measures setup alone, into an existing results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

import trio_vchan
from trio_vchan.sim import SimulatedHost

if TYPE_CHECKING:
    from interop.build import Tools

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "workers.py")
#: tests/interop: builds the C libxenvchan programs and the shim that runs them on the host.
INTEROP = HERE.parent / "tests"
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
    # connection setup, trio-vchan against C libxenvchan
    setup_repetitions: int  # each one runs trio-vchan, then C
    setup_warmup: int  # untimed sequential connections first (process start-up, first use)
    setup_connections: int  # timed sequential connections
    setup_ports: int  # listeners (and clients) at once
    setup_rounds: int  # timed concurrent rounds, after one untimed


FULL = Plan(3, 256 * MIB, 200_000, 3000, (1, 10, 100, 1000), 256 * MIB, 7, 3, 200, 100, 3)
SMOKE = Plan(1, 4 * MIB, 2000, 50, (1, 10), 4 * MIB, 1, 1, 5, 8, 1)
#: The rings of every setup benchmark: trio-vchan's default, asked of libxenvchan too.
SETUP_RING = 64 * KIB
#: Seconds any one setup run may take (the C programs also kill themselves after it).
SETUP_TIMEOUT = 120


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
        return await self.programs(
            [[sys.executable, WORKER, *first], [sys.executable, WORKER, *second]],
            [os.environ | env[0], os.environ | env[1]],
            fds,
        )

    async def programs(
        self,
        commands: Sequence[list[str]],
        envs: Sequence[Mapping[str, str]],
        fds: Sequence[tuple[int, ...]] = ((), ()),
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run two programs at once, each printing one JSON object; return both objects."""
        results: list[dict[str, Any]] = [{}, {}]

        async def run(index: int) -> None:
            done = await trio.run_process(
                commands[index], env=envs[index], capture_stdout=True, pass_fds=fds[index]
            )
            results[index] = json.loads(done.stdout)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0)
            nursery.start_soon(run, 1)
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
        results["setup"] = await measure_setup(runner, plan)
    return results


async def measure_setup_only(plan: Plan) -> dict[str, Any]:
    async with SimulatedHost() as host:
        return await measure_setup(Runner(host), plan) | {"separate_run": True}


# -- connection setup: trio-vchan against C libxenvchan --------------------------------------------
#
# Both contenders run the same scenarios (bench/workers.py "setup", tests/interop/vchan_setup.c):
# server domain 1 keeps listening, client domain 2 connects, sends one byte, receives it back and
# closes, again and again (sequential), or on ``setup_ports`` ports at once (concurrent).

CONTENDERS = ("trio_vchan", "c")
SETUP_KINDS = ("sequential", "concurrent")


def build_c(directory: Path) -> Tools | str:
    """Build the C programs and the shim into ``directory``, or say what is not installed.

    Raises:
        interop.build.BuildError: gcc failed although everything is installed.
    """
    if str(INTEROP) not in sys.path:
        sys.path.insert(0, str(INTEROP))
    from interop.build import build, missing

    reason = missing()
    return reason if reason is not None else build(directory)


async def setup_run(runner: Runner, plan: Plan, kind: str, c: Tools | None) -> dict[str, Any]:
    """One run of ``kind`` for trio-vchan (``c`` None) or for C libxenvchan."""
    prefix = runner.port().replace("bench", "setup") + "-"  # ports prefix0, prefix1, ...
    if kind == "sequential":
        ports, per_port = 1, plan.setup_warmup + plan.setup_connections
        client = {"warmup": plan.setup_warmup, "count": plan.setup_connections}
    else:
        ports, per_port = plan.setup_ports, 1 + plan.setup_rounds
        client = {"ports": ports, "warmup": 1, "rounds": plan.setup_rounds}
    host = runner.host
    if c is None:
        server = {"ports": ports, "connections": per_port, "ring": SETUP_RING}
        commands = [
            [sys.executable, WORKER, "setup", "serve", str(CLIENT), prefix]
            + [f"{k}={v}" for k, v in server.items()],
            [sys.executable, WORKER, "setup", kind, str(SERVER), prefix]
            + [f"{k}={v}" for k, v in client.items()],
        ]
        envs = [os.environ | host.environ(SERVER), os.environ | host.environ(CLIENT)]
    else:
        path = f"/local/domain/{SERVER}/data/vchan/{CLIENT}/{prefix}"
        server_args = [ports, per_port, SETUP_RING, SETUP_RING]
        commands = [
            [str(c.setup), "server", str(CLIENT), path, *map(str, server_args)],
            [str(c.setup), kind, str(SERVER), path, *map(str, client.values())],
        ]
        timeout = {"TIMEOUT": str(SETUP_TIMEOUT)}
        envs = [c.environ(host.environ(d)) | timeout for d in (SERVER, CLIENT)]
    with trio.fail_after(SETUP_TIMEOUT):
        _, result = await runner.programs(commands, envs)
    return result


async def measure_setup(runner: Runner, plan: Plan) -> dict[str, Any]:
    """Both setup scenarios, trio-vchan and C in turns, with paired ratios."""
    with tempfile.TemporaryDirectory(prefix="trio-vchan-bench-") as directory:
        c = build_c(Path(directory))
        if isinstance(c, str):
            print(f"setup: C libxenvchan not measured: {c}", file=sys.stderr)
        return await measure_setup_with(runner, plan, c)


async def measure_setup_with(runner: Runner, plan: Plan, c: Tools | str) -> dict[str, Any]:
    tools = None if isinstance(c, str) else c
    contenders = CONTENDERS if tools is not None else CONTENDERS[:1]
    results: dict[str, Any] = {
        "ring": SETUP_RING,
        "repetitions": plan.setup_repetitions,
        "c_unavailable": c if isinstance(c, str) else None,
    }
    for kind in SETUP_KINDS:
        runs: list[dict[str, float]] = []
        latencies: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(plan.setup_repetitions):
            run: dict[str, float] = {}
            for name in contenders:
                result = await setup_run(runner, plan, kind, tools if name == "c" else None)
                run[f"{name}_cps"] = result["connections"] / result["seconds"]
                run[f"{name}_retries"] = result["retries"]
                latencies[name] += result.get("latencies", [])
            if tools is not None:
                run["ratio"] = run["trio_vchan_cps"] / run["c_cps"]
            runs.append(run)
        entry: dict[str, Any] = {
            "connections": (
                plan.setup_connections
                if kind == "sequential"
                else plan.setup_ports * plan.setup_rounds
            ),
            "ports": 1 if kind == "sequential" else plan.setup_ports,
            "rounds": None if kind == "sequential" else plan.setup_rounds,
            "runs": runs,
            "median_ratio": median([r["ratio"] for r in runs]) if tools is not None else None,
        }
        for name in CONTENDERS:
            if name not in contenders:
                entry[name] = None
                continue
            entry[name] = {"median_cps": median([r[f"{name}_cps"] for r in runs])}
            if latencies[name]:
                entry[name]["latency"] = setup_latency(latencies[name])
        results[kind] = entry
        print(f"setup {kind}: done", file=sys.stderr)
    return results


def setup_latency(seconds: list[float]) -> dict[str, float]:
    """Median, p99, min and max of per-connection times, in milliseconds."""
    ordered = sorted(seconds)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
        "min_ms": ordered[0] * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


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
    parser.add_argument(
        "--setup-only",
        action="store_true",
        help="measure connection setup only, replacing it in an existing results.json",
    )
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    output = args.output / "results.json"
    if args.setup_only:
        results = json.loads(output.read_text())  # fails early if there is none
        results["setup"] = trio.run(measure_setup_only, plan)
        setup_plan = {k: v for k, v in attrs.asdict(plan).items() if k.startswith("setup_")}
        results["plan"] |= setup_plan
    else:
        results = trio.run(measure, plan)
    args.output.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    if args.docs is not None:
        from report import write_report

        write_report(results, args.docs)


if __name__ == "__main__":
    main()
