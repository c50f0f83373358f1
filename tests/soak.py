"""Soak: gigabytes each way between two processes, with checksums, in flat memory.

    python tests/soak.py [--gib 10] [--max-growth-mib 16] [--report-mib 256]

The script runs a simulated host and two workers (this file with ``--worker``): a server and a
client that exchange the same amount both ways at once through 1 MiB rings, hashing (SHA-256)
everything they send and receive. Each worker reports every ``--report-mib`` it has received;
at every report the driver samples the resident set size (``VmRSS``) of both workers. At the
end it checks that each side received exactly what the other sent, and that neither worker's
RSS grew by more than ``--max-growth-mib`` after the first report (warm-up: rings mapped,
buffers allocated), then prints the figures. ``nox -s soak`` runs 10 GiB each way;
``tests/test_soak.py`` runs a small one in the normal test run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from typing import TYPE_CHECKING, Final

import attrs
import trio

if TYPE_CHECKING:
    from trio_vchan.sim import SimulatedHost

MIB: Final = 1 << 20
GIB: Final = 1 << 30
SERVER, CLIENT = 1, 2
PORT: Final = "soak"
#: A little over 1 MiB, so that pieces never line up with the ring.
BLOCK: Final = bytes(range(256)) * 4096 + b"trio-vchan"


# -- the workers -----------------------------------------------------------------------------------


async def worker(role: str, total: int, report_every: int) -> None:
    import trio_vchan

    pattern = memoryview(BLOCK * 2)

    async def exchange(stream: trio_vchan.VchanStream) -> None:
        sent, received = hashlib.sha256(), hashlib.sha256()

        async def send() -> None:
            offset = 0
            while offset < total:
                size = min(total - offset, 65536 + offset % 7919)
                start = offset % len(BLOCK)
                piece = pattern[start : start + size]
                sent.update(piece)
                await stream.send_all(piece)
                offset += size

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            count, next_report = 0, report_every
            while count < total:
                data = await stream.receive_some(MIB)
                if not data:
                    raise EOFError(f"end of stream after {count} of {total} bytes")
                received.update(data)
                count += len(data)
                if count >= next_report:
                    print(f"progress {count}", flush=True)
                    next_report += report_every
        print(f"done {sent.hexdigest()} {received.hexdigest()}", flush=True)

    if role == "server":
        async with trio_vchan.serve(CLIENT, PORT, read_size=MIB, write_size=MIB) as stream:
            print("connected", flush=True)
            await exchange(stream)
    else:
        async with trio_vchan.connect(SERVER, PORT) as stream:
            print("connected", flush=True)
            await exchange(stream)


# -- the driver ------------------------------------------------------------------------------------


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@attrs.define
class Worker:
    role: str
    process: trio.Process
    connected_rss: int = 0
    samples: list[int] = attrs.Factory(list)  # RSS at each report of either worker
    digests: tuple[str, str] = ("", "")  # sent, received

    @property
    def growth(self) -> int:
        return max(self.samples) - self.samples[0]


@attrs.frozen
class SoakResult:
    total: int
    seconds: float
    workers: tuple[Worker, Worker]

    def report(self) -> str:
        rate = self.total / MIB / self.seconds
        lines = [
            f"soak: {self.total / GIB:g} GiB each way in {self.seconds:.1f} s"
            f" ({rate:.0f} MiB/s each way), checksums equal"
        ]
        for w in self.workers:
            lines.append(
                f"  {w.role}: RSS {w.connected_rss / MIB:.1f} MiB connected,"
                f" {w.samples[0] / MIB:.1f} MiB at the first report, {w.samples[-1] / MIB:.1f} MiB"
                f" at the last ({len(w.samples)} samples), peak {max(w.samples) / MIB:.1f} MiB,"
                f" growth {w.growth / MIB:+.1f} MiB"
            )
        return "\n".join(lines)


async def _follow(worker: Worker, workers: list[Worker]) -> None:
    """Read a worker's reports; sample every worker's RSS at each one."""
    stdout = worker.process.stdout
    assert stdout is not None
    buffer = b""
    while True:
        chunk = await stdout.receive_some()
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            words = line.decode().split()
            if words[0] == "connected":
                worker.connected_rss = rss(worker.process.pid)
            elif words[0] == "progress":
                for each in workers:
                    if each.process.returncode is None and not each.digests[0]:
                        each.samples.append(rss(each.process.pid))
            elif words[0] == "done":
                worker.digests = (words[1], words[2])
    code = await worker.process.wait()
    if code != 0:
        raise RuntimeError(f"the {worker.role} worker exited with {code}")


async def run_soak(
    host: SimulatedHost, total: int, report_every: int, max_growth: int
) -> SoakResult:
    """Exchange ``total`` bytes each way between two worker processes on a running ``host``.

    Raises:
        AssertionError: the data differ, or a worker's RSS grew by more than ``max_growth``.
    """
    workers: list[Worker] = []
    started = time.monotonic()
    try:
        for role, domid in (("server", SERVER), ("client", CLIENT)):
            process = await trio.lowlevel.open_process(
                [sys.executable, __file__, "--worker", role, str(total), str(report_every)],
                env=os.environ | host.environ(domid),
                stdout=-1,  # subprocess.PIPE
            )
            workers.append(Worker(role, process))
        async with trio.open_nursery() as nursery:
            for w in workers:
                nursery.start_soon(_follow, w, workers)
    finally:
        for w in workers:
            if w.process.returncode is None:
                w.process.kill()
            await w.process.wait()
            assert w.process.stdout is not None
            await w.process.stdout.aclose()
    seconds = time.monotonic() - started
    server, client = workers
    assert server.digests[0] == client.digests[1], "the client received other bytes than sent"
    assert client.digests[0] == server.digests[1], "the server received other bytes than sent"
    result = SoakResult(total, seconds, (server, client))
    for w in workers:
        assert w.samples, f"no RSS samples of the {w.role}: report more often"
        assert w.growth <= max_growth, (
            f"the {w.role}'s RSS grew by {w.growth / MIB:.1f} MiB (limit"
            f" {max_growth / MIB:g} MiB)\n{result.report()}"
        )
    return result


async def main(gib: float, max_growth_mib: float, report_mib: float) -> None:
    from trio_vchan.sim import SimulatedHost

    async with SimulatedHost() as host:
        result = await run_soak(
            host, int(gib * GIB), int(report_mib * MIB), int(max_growth_mib * MIB)
        )
        await host.wait_idle()
        leaks = host.leaks()
        assert leaks == [], f"left behind: {leaks}"
    print(result.report())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        role, total, every = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        trio.run(worker, role, total, every)
    else:
        parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        parser.add_argument("--gib", type=float, default=10.0, help="each way (default 10)")
        parser.add_argument("--max-growth-mib", type=float, default=16.0)
        parser.add_argument("--report-mib", type=float, default=256.0)
        args = parser.parse_args()
        trio.run(main, args.gib, args.max_growth_mib, args.report_mib)
