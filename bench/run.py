"""Run every benchmark in one go and write the results, a table and a plot.

    python bench/run.py [--smoke] [--setup-only] [--output DIR] [--docs DIR]

Everything is measured in this one run, so ratios compare like with like. The contenders run
between two processes on a simulated host: trio-vchan; Xen's C libxenvchan driven by a C
program (tests/interop/vchan_bench.c, the reference); the same C library wrapped with cffi
and driven from Trio (bench/cvchan.py, what a Python user would write instead); Trio over a
Unix socketpair; and a plain in-process memory copy as the bound. The C contenders join the
simulated host through tests/interop's shim, when libxenvchan is installed. Within each
repetition of a cell the contenders take turns (round-robin), and every ratio is paired: a
contender over its baseline of the same repetition; tables give the median of those ratios.
``--smoke`` runs a seconds-long version that checks the machinery only; ``--setup-only``
measures connection setup alone, into an existing results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
#: tests/interop: builds the C libxenvchan programs (the shim that runs them on the host comes
#: with the package, trio_vchan/_xenshim).
INTEROP = HERE.parent / "tests"
SERVER, CLIENT = 1, 2
KIB, MIB = 1 << 10, 1 << 20
WRITE_SIZES = [64, KIB, 64 * KIB, MIB]
PING_SIZES = [1, 64]
BUSY_POLL = 50e-6
#: Seconds any one C program may take (it kills itself after that: a lost wake-up fails).
C_TIMEOUT = 300
#: Seconds any one run of two programs may take before the bench gives up on it.
RUN_TIMEOUT = 600


@attrs.frozen
class Ring:
    """The minimum ring sizes a one-way cell's server asks for; the server is the sender.

    Both implementations pick orders as libxenvchan_server_init() does: 1024 back and 2048
    forward fit both rings into the shared page (2048/2048 would not: the forward ring would
    be an external 4 KiB one). bench/run.py checks what each really uses (:func:`check_rings`).
    """

    read_size: int
    write_size: int

    def params(self) -> dict[str, int]:
        return {"read_size": self.read_size, "write_size": self.write_size}


RINGS = (Ring(KIB, 2 * KIB), Ring(64 * KIB, 64 * KIB), Ring(MIB, MIB))
#: Many vchans at once: each with a 64 KiB ring, then with both rings in the shared page (a
#: grant each: 10,000 vchans of 18 grants would not fit a domain's 32768 grant refs, as on Xen).
SCALE_RING, IN_PAGE_RING = Ring(4 * KIB, 64 * KIB), RINGS[0]
#: Event channels per domain for the many-vchans runs, as xl's max_event_channels would be set
#: for a domain with 10,000 vchans (the simulated host's default is Xen's 2-level ABI's 4096).
SCALE_EVENT_CHANNELS = 16384


@attrs.frozen
class Plan:
    repetitions: int
    bytes_per_run: int  # for large writes
    writes_per_run: int  # caps the volume of small writes, so every run takes similar time
    ring_fills: int  # caps the volume through small rings (in ring sizes)
    round_trips: int
    scale: tuple[tuple[int, Ring], ...]  # vchans at once, the rings' sizes
    scale_bytes: int
    copy_bytes: int  # the file-to-file copy
    # connection setup, trio-vchan against C libxenvchan
    setup_repetitions: int  # each one runs trio-vchan, then C
    setup_warmup: int  # untimed sequential connections first (process start-up, first use)
    setup_connections: int  # timed sequential connections
    setup_ports: int  # listeners (and clients) at once
    setup_rounds: int  # timed concurrent rounds, after one untimed


FULL = Plan(
    3,
    256 * MIB,
    200_000,
    16384,
    3000,
    tuple((n, SCALE_RING) for n in (1, 10, 100, 1000))
    + tuple((n, IN_PAGE_RING) for n in (1000, 5000, 10_000)),
    256 * MIB,
    256 * MIB,
    7,
    3,
    200,
    100,
    3,
)
SMOKE = Plan(
    1,
    4 * MIB,
    2000,
    64,
    50,
    ((1, SCALE_RING), (10, SCALE_RING), (10, IN_PAGE_RING)),
    4 * MIB,
    4 * MIB,
    1,
    1,
    5,
    8,
    1,
)
#: The rings of every setup benchmark: trio-vchan's default, asked of libxenvchan too.
SETUP_RING = 64 * KIB
#: Seconds any one setup run may take (the C programs also kill themselves after it).
SETUP_TIMEOUT = 120


#: The cells of the mixed pairs (one end trio-vchan, the other C): which side bounds.
MIXED_WRITES, MIXED_RING = (64, KIB, 64 * KIB), RINGS[-1]


def volume(plan: Plan, write: int, ring: Ring) -> int:
    cap = min(plan.bytes_per_run, write * plan.writes_per_run, ring.write_size * plan.ring_fills)
    return max(1, cap // write) * write


@attrs.frozen
class Baselines:
    """The built C side: tests/interop's programs and shim, and the cffi wrapper's module."""

    tools: Tools
    cvchan: Path


def build_baselines(directory: Path) -> Baselines | str:
    """Build the C programs, the shim and the wrapper, or say what is not installed.

    Raises:
        interop.build.BuildError: gcc failed although everything is installed.
    """
    for path in (str(INTEROP), str(HERE)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import cvchan
    from interop.build import build, missing

    reason = missing()
    if reason is not None:
        return reason
    if not (Path(sysconfig.get_path("include")) / "Python.h").exists():
        return "the cffi wrapper needs Python's C headers (Python.h): apt-get install python3-dev"
    tools: Tools = build(directory / "c")
    return Baselines(tools, cvchan.build(directory / "cvchan"))


#: The C program's positional arguments per scenario (tests/interop/vchan_bench.c).
C_ARGUMENTS = {
    "source": ("total", "write"),
    "sink": ("total",),
    "ping": ("count", "size", "busy_us"),
    "pong": ("count", "size", "busy_us"),
    "send-file": ("file", "chunk"),
    "receive-file": ("file", "chunk"),
}


@attrs.frozen
class End:
    """One end of a vchan: ``kind`` is "vchan" (trio-vchan), "cvchan" (the wrapper) or "c"."""

    kind: str
    scenario: str
    params: Mapping[str, Any] = attrs.field(factory=dict)


class Runner:
    def __init__(self, host: SimulatedHost, c: Baselines | str) -> None:
        self.host = host
        self.c = c
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

        with trio.move_on_after(RUN_TIMEOUT) as deadline:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, 0)
                nursery.start_soon(run, 1)
        if deadline.cancelled_caught:
            raise TimeoutError(
                f"{commands[0]} and {commands[1]} took more than {RUN_TIMEOUT} s; a lost"
                " wake-up? Run the two by hand on a simulated host (trio-vchan sim) to see"
            )
        return results[0], results[1]

    def baselines(self) -> Baselines:
        if isinstance(self.c, str):
            raise TypeError(f"C libxenvchan is not available: {self.c}")
        return self.c

    def command(
        self, end: End, serve: bool, port: str, ring: Ring
    ) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of one end (the server when ``serve``)."""
        domain, peer = (SERVER, CLIENT) if serve else (CLIENT, SERVER)
        sim = self.host.environ(domain)
        path = f"/local/domain/{SERVER}/data/vchan/{CLIENT}/{port}"
        params = dict(end.params) | (ring.params() if serve else {})
        if end.kind == "vchan":
            role = ["vchan", "serve" if serve else "connect", str(peer), port]
            args = [*role, end.scenario, *(f"{k}={v}" for k, v in params.items())]
            return [sys.executable, WORKER, *args], os.environ | sim
        c = self.baselines()
        if end.kind == "cvchan":
            role = ["cvchan", "serve" if serve else "connect", str(peer), path]
            args = [*role, end.scenario, *(f"{k}={v}" for k, v in params.items())]
            return [sys.executable, WORKER, *args], c.tools.environ(sim) | {
                "BENCH_CVCHAN": str(c.cvchan)
            }
        rings = [str(params.pop("read_size")), str(params.pop("write_size"))] if serve else []
        params["busy_us"] = params.pop("busy_poll", 0.0) * 1e6
        positional = [str(params[name]) for name in C_ARGUMENTS[end.scenario]]
        role = ["server" if serve else "client", str(peer), path, *rings]
        command = [str(c.tools.bench), *role, end.scenario, *positional]
        return command, c.tools.environ(sim) | {"TIMEOUT": str(C_TIMEOUT)}

    async def stream(
        self, server: End, client: End, ring: Ring = RINGS[1]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run a vchan's two ends at once; return what each printed."""
        port = self.port()
        (first, first_env), (second, second_env) = (
            self.command(server, True, port, ring),
            self.command(client, False, port, ring),
        )
        return await self.programs([first, second], [first_env, second_env])

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


@attrs.frozen
class Contender:
    """One contender of a benchmark: its name in the results, how to run it once, where."""

    name: str
    run: Callable[..., Awaitable[Any]]
    needs_c: bool = False
    #: (write, ring) -> whether this contender runs in that one-way cell
    cells: Callable[[int, Ring], bool] = lambda write, ring: True


# -- one-way throughput: (runner, write, ring, total) -> MB/s at the receiver ------------------
#
# A new contender is one such function (usually one_way_between() over a worker scenario of
# bench/workers.py's SCENARIOS) and one line in ONE_WAY; its ratios, one line in ONE_WAY_RATIOS.


def one_way_between(
    sender: str, receiver: str, source: str = "source", sink: str = "sink"
) -> Callable[..., Awaitable[float]]:
    """A ``source`` scenario over a transport of kind ``sender`` (the server) and a ``sink``
    over one of kind ``receiver``."""

    async def run(runner: Runner, write: int, ring: Ring, total: int) -> float:
        sending = End(sender, source, {"total": total, "write": write})
        _, received = await runner.stream(sending, End(receiver, sink, {"total": total}), ring)
        return mb_per_s(total, received["seconds"])

    return run


def small(write: int, ring: Ring) -> bool:
    return write <= KIB


async def two_way(runner: Runner, write: int, ring: Ring, total: int) -> float:
    """trio-vchan sending and receiving at both ends at once: the sum of both directions."""
    duplex = End("vchan", "duplex", {"total": total, "write": write})
    server, client = await runner.stream(duplex, duplex, ring)
    return mb_per_s(total, server["receive"]["seconds"]) + mb_per_s(
        total, client["receive"]["seconds"]
    )


async def socketpair_one_way(runner: Runner, write: int, ring: Ring, total: int) -> float:
    args = [f"total={total}"]
    _, sink = await runner.socketpair(["source", *args, f"write={write}"], ["sink", *args])
    return mb_per_s(total, sink["seconds"])


async def memcpy_one_way(runner: Runner, write: int, ring: Ring, total: int) -> float:
    return memcpy_rate(write, total)


def mixed(write: int, ring: Ring) -> bool:
    return write in MIXED_WRITES and ring == MIXED_RING


ONE_WAY = (
    Contender("trio_vchan", one_way_between("vchan", "vchan")),
    Contender("trio_vchan_into", one_way_between("vchan", "vchan", sink="sink_into")),
    Contender(
        "trio_vchan_messages",
        one_way_between("vchan", "vchan", "message_source", "message_sink"),
        cells=small,
    ),
    Contender("wrapper", one_way_between("cvchan", "cvchan"), needs_c=True),
    Contender("c", one_way_between("c", "c"), needs_c=True),
    Contender("trio_vchan_to_c", one_way_between("vchan", "c"), needs_c=True, cells=mixed),
    Contender("c_to_trio_vchan", one_way_between("c", "vchan"), needs_c=True, cells=mixed),
    Contender("socketpair", socketpair_one_way),
    Contender("memcpy", memcpy_one_way),
    Contender("trio_vchan_two_way", two_way),
)
#: (contender, baseline): each one-way cell's paired ratios.
ONE_WAY_RATIOS = (
    ("trio_vchan", "c"),
    ("trio_vchan_into", "c"),
    ("trio_vchan_messages", "c"),
    ("trio_vchan_messages", "wrapper"),
    ("trio_vchan", "wrapper"),
    ("trio_vchan", "socketpair"),
    ("wrapper", "c"),
    ("trio_vchan_to_c", "c"),
    ("c_to_trio_vchan", "c"),
)


# -- round trips: (runner, size, count) -> seconds per round trip -------------------------------


def round_trip_between(kind: str, **extra: float) -> Callable[..., Awaitable[list[float]]]:
    """Both ends of ``kind``: the client pings, the server pongs."""

    async def run(runner: Runner, size: int, count: int) -> list[float]:
        params = {"count": count, "size": size, **extra}
        _, client = await runner.stream(End(kind, "pong", params), End(kind, "ping", params))
        trips: list[float] = client["round_trips"]
        return trips

    return run


async def socketpair_round_trip(runner: Runner, size: int, count: int) -> list[float]:
    params = [f"count={count}", f"size={size}"]
    client, _ = await runner.socketpair(["ping", *params], ["pong", *params])
    trips: list[float] = client["round_trips"]
    return trips


ROUND_TRIPS = (
    Contender("trio_vchan", round_trip_between("vchan")),
    Contender("trio_vchan_busy_poll", round_trip_between("vchan", busy_poll=BUSY_POLL)),
    Contender("wrapper", round_trip_between("cvchan"), needs_c=True),
    Contender("c", round_trip_between("c"), needs_c=True),
    Contender("c_busy_poll", round_trip_between("c", busy_poll=BUSY_POLL), needs_c=True),
    Contender("socketpair", socketpair_round_trip),
)
ROUND_TRIP_RATIOS = (
    ("trio_vchan", "wrapper"),
    ("trio_vchan", "socketpair"),
    ("trio_vchan", "c"),
    ("trio_vchan_busy_poll", "c"),
    ("trio_vchan_busy_poll", "c_busy_poll"),
    ("wrapper", "c"),
)


# -- file-to-file copy: (runner, original, copy) -> seconds, both programs' whole run ------------
#
# As scripts/demo-transfer.sh: domain 2 listens and writes what arrives into a file, domain 1
# connects and sends a file, rings of COPY_RING. Timed from starting both programs until both
# have exited (process start-up included: the job as a user times it).

COPY_RING = MIB


async def copy_with_cat(runner: Runner, original: Path, copy: Path) -> float:
    """``trio-vchan cat`` at both ends.

    Run from the copy's directory: ``python -m`` puts the working directory first on sys.path,
    and in a clone's root that would be the source tree (without its native part).
    """
    port, host, cwd = runner.port(), runner.host, original.parent
    cat = [sys.executable, "-m", "trio_vchan", "cat", "--buffer-size", str(COPY_RING), "-q"]
    receiver = [*cat, "-l", str(SERVER), port]
    start = time.perf_counter()
    with original.open("rb") as source, copy.open("wb") as target:
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                env = os.environ | host.environ(CLIENT)
                await trio.run_process(
                    receiver, stdin=subprocess.DEVNULL, stdout=target, env=env, cwd=cwd
                )

            async def send() -> None:
                env = os.environ | host.environ(SERVER)
                sender = [*cat, str(CLIENT), port]
                await trio.run_process(sender, stdin=source, env=env, cwd=cwd)

            nursery.start_soon(receive)
            nursery.start_soon(send)
    return time.perf_counter() - start


async def copy_with_c(runner: Runner, original: Path, copy: Path) -> float:
    """vchan_bench.c's send-file and receive-file (libxenvchan_write, libxenvchan_read)."""
    c = runner.baselines()
    port, host = runner.port(), runner.host
    path = f"/local/domain/{CLIENT}/data/vchan/{SERVER}/{port}"
    ring = str(COPY_RING)
    bench = str(c.tools.bench)
    commands = [
        [bench, "server", str(SERVER), path, ring, ring, "receive-file", str(copy), ring],
        [bench, "client", str(CLIENT), path, "send-file", str(original), ring],
    ]
    timeout = {"TIMEOUT": str(C_TIMEOUT)}
    envs = [c.tools.environ(host.environ(d)) | timeout for d in (CLIENT, SERVER)]
    start = time.perf_counter()
    await runner.programs(commands, envs)
    return time.perf_counter() - start


COPIES = (
    Contender("trio_vchan", copy_with_cat),
    Contender("c", copy_with_c, needs_c=True),
)


def contenders(table: Sequence[Contender], runner: Runner) -> list[Contender]:
    """Those of ``table`` that can run here (the C ones need libxenvchan)."""
    return [c for c in table if not c.needs_c or not isinstance(runner.c, str)]


def paired(
    runs: Mapping[str, list[float]], pairs: Sequence[tuple[str, str]], lower_is_better: bool
) -> dict[str, dict[str, Any]]:
    """Per (contender, baseline) measured together: the ratios per repetition, their median.

    Ratios are always contender / baseline of rates (MB/s), or baseline / contender of times,
    so that above 1 means the contender is faster.
    """
    ratios: dict[str, dict[str, Any]] = {}
    for name, baseline in pairs:
        if name not in runs or baseline not in runs:
            continue
        each = [
            (b / a if lower_is_better else a / b)
            for a, b in zip(runs[name], runs[baseline], strict=True)
        ]
        ratios[f"{name}/{baseline}"] = {"median": median(each), "runs": each}
    return ratios


async def check_rings(runner: Runner) -> list[dict[str, Any]]:
    """What each implementation really uses for each of RINGS (a short transfer on each)."""
    checked = []
    for ring in RINGS:
        entry: dict[str, Any] = {"read_size": ring.read_size, "write_size": ring.write_size}
        total = 4 * ring.write_size
        source = End("vchan", "source", {"total": total, "write": 1024})
        server, _ = await runner.stream(source, End("vchan", "sink", {"total": total}), ring)
        entry["trio_vchan_write_ring"] = server["write_ring"]
        if not isinstance(runner.c, str):
            source = End("c", "source", {"total": total, "write": 1024})
            server, _ = await runner.stream(source, End("c", "sink", {"total": total}), ring)
            entry["c_orders"] = {"read": server["read_order"], "write": server["write_order"]}
            c_ring = 1 << server["write_order"]
            if c_ring != entry["trio_vchan_write_ring"]:
                raise RuntimeError(
                    f"rings asked as {ring}: trio-vchan writes into"
                    f" {entry['trio_vchan_write_ring']} bytes, C libxenvchan into {c_ring};"
                    " the cell's label would be wrong for one of them"
                )
        checked.append(entry)
    return checked


async def measure(plan: Plan) -> dict[str, Any]:
    results: dict[str, Any] = {
        "plan": attrs.asdict(plan),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "trio_vchan": trio_vchan.__version__,
        },
    }
    with tempfile.TemporaryDirectory(prefix="trio-vchan-bench-") as directory:
        c = build_baselines(Path(directory))
        results["c_unavailable"] = c if isinstance(c, str) else None
        if isinstance(c, str):
            print(f"C libxenvchan not measured: {c}", file=sys.stderr)
        from workers import raise_fd_limit  # bench/: this script's directory

        fd_limit = raise_fd_limit()  # the host's, for the many vchans
        async with SimulatedHost(max_event_channels=SCALE_EVENT_CHANNELS) as host:
            runner = Runner(host, c)
            results["rings"] = await check_rings(runner)
            results["one_way"] = await measure_one_way(runner, plan)
            results["round_trips"] = await measure_round_trips(runner, plan)
            results["copy"] = await measure_copy(runner, plan, Path(directory))
            results["scale"] = await measure_scale(runner, plan, fd_limit)
            results["setup"] = await measure_setup(runner, plan)
    return results


async def measure_one_way(runner: Runner, plan: Plan) -> list[dict[str, Any]]:
    cells = []
    for write in WRITE_SIZES:
        for ring in RINGS:
            total = volume(plan, write, ring)
            here = [c for c in contenders(ONE_WAY, runner) if c.cells(write, ring)]
            runs: dict[str, list[float]] = {c.name: [] for c in here}
            for _ in range(plan.repetitions):
                for contender in here:
                    runs[contender.name].append(await contender.run(runner, write, ring, total))
            cells.append(
                {
                    "write": write,
                    "ring": ring.write_size,
                    "read_ring": ring.read_size,
                    "bytes": total,
                    "MBps": {name: median(values) for name, values in runs.items()},
                    "runs": runs,
                    "ratios": paired(runs, ONE_WAY_RATIOS, lower_is_better=False),
                }
            )
        print(f"write {write}: done", file=sys.stderr)
    return cells


async def measure_round_trips(runner: Runner, plan: Plan) -> list[dict[str, Any]]:
    entries = []
    for size in PING_SIZES:
        here = contenders(ROUND_TRIPS, runner)
        trips: dict[str, list[float]] = {c.name: [] for c in here}
        medians: dict[str, list[float]] = {c.name: [] for c in here}
        for _ in range(plan.repetitions):
            for contender in here:
                times = await contender.run(runner, size, plan.round_trips)
                trips[contender.name] += times
                medians[contender.name].append(median(times))
        entries.append(
            {
                "size": size,
                "latency": {name: latency(times) for name, times in trips.items()},
                "median_runs_us": {n: [t * 1e6 for t in m] for n, m in medians.items()},
                "ratios": paired(medians, ROUND_TRIP_RATIOS, lower_is_better=True),
            }
        )
    print("round trips: done", file=sys.stderr)
    return entries


async def measure_copy(runner: Runner, plan: Plan, directory: Path) -> dict[str, Any]:
    """The file-to-file copy: a file of random data, copied by each contender in turn."""
    original, copy = directory / "original", directory / "copy"
    with original.open("wb") as out:
        for _ in range(plan.copy_bytes // MIB):
            out.write(os.urandom(MIB))
    here = contenders(COPIES, runner)
    seconds: dict[str, list[float]] = {c.name: [] for c in here}
    for _ in range(plan.repetitions):
        for contender in here:
            seconds[contender.name].append(await contender.run(runner, original, copy))
            if not same_file(original, copy):
                raise RuntimeError(f"the {contender.name} copy differs from the original")
            copy.unlink()
    original.unlink()
    rates = {name: [mb_per_s(plan.copy_bytes, s) for s in each] for name, each in seconds.items()}
    print("file copy: done", file=sys.stderr)
    return {
        "bytes": plan.copy_bytes,
        "ring": COPY_RING,
        "seconds": seconds,
        "MBps": {name: median(each) for name, each in rates.items()},
        "ratios": paired(rates, [("trio_vchan", "c")], lower_is_better=False),
    }


def same_file(first: Path, second: Path) -> bool:
    with first.open("rb") as a, second.open("rb") as b:
        while True:
            left, right = a.read(MIB), b.read(MIB)
            if left != right:
                return False
            if not left:
                return True


#: File descriptors per vchan: in the client's process (its event channel's two eventfds) and
#: in the host's (the two eventfds, and a memfd per share: 1 with in-page rings, which the
#: large counts use; 3 with external rings). Plus what any process holds besides.
CLIENT_FDS_PER_VCHAN, HOST_FDS_PER_VCHAN, FDS_BESIDES = 2, 3, 200


def scale_fds_missing(count: int, fd_limit: int) -> str | None:
    """Why ``count`` vchans cannot run under ``fd_limit`` here, or None if they can."""
    needed = count * max(CLIENT_FDS_PER_VCHAN, HOST_FDS_PER_VCHAN) + FDS_BESIDES
    if needed <= fd_limit:
        return None
    return (
        f"needs about {needed} fds in the host's process ({HOST_FDS_PER_VCHAN} per vchan) and"
        f" the fd limit is {fd_limit} (only a process with CAP_SYS_RESOURCE may raise it)"
    )


async def measure_scale(runner: Runner, plan: Plan, fd_limit: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    host = runner.host
    for count, ring in plan.scale:
        cell = {"count": count, "read_size": ring.read_size, "write_size": ring.write_size}
        missing = scale_fds_missing(count, fd_limit)
        if missing is not None:
            entries.append(cell | {"not_run": missing})
            print(f"scale {count}: not run: {missing}", file=sys.stderr)
            continue
        runs = []
        for _ in range(plan.repetitions):
            params = [f"count={count}", f"total={plan.scale_bytes}"]
            rings = [f"{key}={value}" for key, value in ring.params().items()]
            # The server is dom0: a guest's XenStore quota (1000 nodes, as C xenstored's)
            # does not hold 1000 advertisements at once.
            _, client = await runner.pair(
                ["scale", "serve", str(CLIENT), "-", *params, *rings],
                ["scale", "connect", "0", "-", *params],
                (host.environ(0), host.environ(CLIENT)),
            )
            runs.append(client)
        entries.append(
            cell | {key: median([run[key] for run in runs]) for key in runs[0] if key != "received"}
        )
        print(f"scale {count}: done", file=sys.stderr)
    return entries


async def measure_setup_only(plan: Plan) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="trio-vchan-bench-") as directory:
        c = build_baselines(Path(directory))
        async with SimulatedHost() as host:
            return await measure_setup(Runner(host, c), plan) | {"separate_run": True}


# -- connection setup: trio-vchan against C libxenvchan --------------------------------------------
#
# Both contenders run the same scenarios (bench/workers.py "setup", tests/interop/vchan_setup.c):
# server domain 1 keeps listening, client domain 2 connects, sends one byte, receives it back and
# closes, again and again (sequential), or on ``setup_ports`` ports at once (concurrent).

CONTENDERS = ("trio_vchan", "c", "wrapper")
SETUP_KINDS = ("sequential", "concurrent")


async def setup_run(runner: Runner, plan: Plan, kind: str, contender: str) -> dict[str, Any]:
    """One run of ``kind`` for ``contender`` (one of CONTENDERS)."""
    prefix = runner.port().replace("bench", "setup") + "-"  # ports prefix0, prefix1, ...
    if kind == "sequential":
        ports, per_port = 1, plan.setup_warmup + plan.setup_connections
        client = {"warmup": plan.setup_warmup, "count": plan.setup_connections}
    else:
        ports, per_port = plan.setup_ports, 1 + plan.setup_rounds
        client = {"ports": ports, "warmup": 1, "rounds": plan.setup_rounds}
    host = runner.host
    path = f"/local/domain/{SERVER}/data/vchan/{CLIENT}/{prefix}"
    if contender != "c":
        server = {"ports": ports, "connections": per_port, "ring": SETUP_RING}
        worker, where = ("setup", prefix) if contender == "trio_vchan" else ("cvchan-setup", path)
        commands = [
            [sys.executable, WORKER, worker, "serve", str(CLIENT), where]
            + [f"{k}={v}" for k, v in server.items()],
            [sys.executable, WORKER, worker, kind, str(SERVER), where]
            + [f"{k}={v}" for k, v in client.items()],
        ]
        if contender == "trio_vchan":
            envs = [os.environ | host.environ(d) for d in (SERVER, CLIENT)]
        else:
            wrapper = runner.baselines()
            extra = {"BENCH_CVCHAN": str(wrapper.cvchan)}
            envs = [wrapper.tools.environ(host.environ(d)) | extra for d in (SERVER, CLIENT)]
    else:
        c = runner.baselines().tools
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
    """Both setup scenarios, trio-vchan, C and the wrapper in turns, with paired ratios."""
    c = runner.c
    available = not isinstance(c, str)
    contenders = CONTENDERS if available else CONTENDERS[:1]
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
                result = await setup_run(runner, plan, kind, name)
                run[f"{name}_cps"] = result["connections"] / result["seconds"]
                run[f"{name}_retries"] = result["retries"]
                latencies[name] += result.get("latencies", [])
            if available:
                run["ratio"] = run["trio_vchan_cps"] / run["c_cps"]
                run["ratio_wrapper"] = run["trio_vchan_cps"] / run["wrapper_cps"]
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
            "median_ratio": median([r["ratio"] for r in runs]) if available else None,
            "median_ratio_wrapper": (
                median([r["ratio_wrapper"] for r in runs]) if available else None
            ),
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
