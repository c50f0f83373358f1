"""The simulated host of two source trees, side by side: XenStore requests per second and the
connection-setup rate of C libxenvchan.

    python bench/host_ab.py [--repetitions N] BEFORE_TREE BEFORE_SHIM AFTER_TREE AFTER_SHIM

Each TREE is a checkout whose ``trio_vchan`` imports as it is (its compiled modules built or
copied in place); each SHIM the libxenevtchn/libxengnttab shim built from it (the package's
``trio_vchan/_xenshim/libtrio-vchan-xenshim.so``, or tests/interop/xenshim.c in older trees).
The host runs in a child process importing that tree; the clients are the same for both:

- ``xenstore 1``, ``xenstore 16``: one client process with 1 or 16 connections to domain 2's
  XenStore socket, each with one READ outstanding at a time, for about a second;
- ``C setup``: tests/interop/vchan_setup.c's sequential run (connect, one byte each way,
  close; 200 timed after 20), a server in domain 1 and a client in domain 2.

The contenders alternate in each repetition; ratios are AFTER / BEFORE of the same repetition,
and the medians are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent

# Runs in the child, with the tree first on sys.path: start a host, run the clients, print JSON.
HOST = r"""
import json, os, subprocess, sys, time
import trio
from trio_vchan.sim import SimulatedHost

shim, setup, load = sys.argv[1], sys.argv[2], sys.argv[3]

async def main():
    results = {}
    async with SimulatedHost() as host:
        def env(domid):
            return os.environ | host.environ(domid) | {
                "LD_PRELOAD": shim,
                "XENSTORED_PATH": os.path.join(host.directory, "domains", str(domid), "xenstore"),
                "TIMEOUT": "120",
            }
        host.add_domain(2)
        for clients in (1, 16):
            done = await trio.run_process(
                [sys.executable, load, env(2)["XENSTORED_PATH"], str(clients)],
                capture_stdout=True,
            )
            results[f"xenstore {clients}"] = float(done.stdout)
        path = "/local/domain/1/data/vchan/2/ab-"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: trio.run_process(
                [setup, "server", "2", path, "1", "220", "65536", "65536"],
                env=env(1), capture_stdout=True))
            client = await trio.run_process(
                [setup, "sequential", "1", path, "20", "200"], env=env(2), capture_stdout=True)
        results["C setup"] = 200 / json.loads(client.stdout)["seconds"]
    print(json.dumps(results))

trio.run(main)
"""

# The XenStore load: CONNECTIONS sockets, one READ of "domid" outstanding on each.
LOAD = r"""
import selectors, socket, struct, sys, time
path, count = sys.argv[1], int(sys.argv[2])
request = struct.pack("<IIII", 2, 0, 0, 6) + b"domid\0"
selector = selectors.DefaultSelector()
socks = []
for _ in range(count):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    socks.append(sock)
    selector.register(sock, selectors.EVENT_READ)
def one_round():
    for sock in socks:
        sock.sendall(request)
    waiting = len(socks)
    while waiting:
        for key, _ in selector.select():
            header = key.fileobj.recv(16, socket.MSG_WAITALL)
            key.fileobj.recv(struct.unpack("<IIII", header)[3], socket.MSG_WAITALL)
            waiting -= 1
for _ in range(20):
    one_round()
done, start = 0, time.perf_counter()
while time.perf_counter() - start < 1.0:
    one_round()
    done += count
print(done / (time.perf_counter() - start))
"""


def run(tree: str, shim: str, setup: str, load: str) -> dict[str, float]:
    env = os.environ | {"PYTHONPATH": tree}
    result = subprocess.run(
        [sys.executable, "-c", HOST, shim, setup, load],
        env=env,
        cwd=tempfile.gettempdir(),  # not a source tree: the tree comes from PYTHONPATH
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode:
        raise SystemExit(f"the host of {tree} failed:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("before_tree")
    parser.add_argument("before_shim")
    parser.add_argument("after_tree")
    parser.add_argument("after_shim")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))  # as bench/run.py imports tests/interop
    from interop.build import compile_c

    with tempfile.TemporaryDirectory(prefix="trio-vchan-host-ab-") as directory:
        setup = Path(directory) / "vchan-setup"
        compile_c(
            "-pthread",
            "-o",
            setup,
            ROOT / "tests/interop/vchan_setup.c",
            "-lxenvchan",
            "-lxenstore",
        )
        load = Path(directory) / "load.py"
        load.write_text(LOAD)
        runs: list[dict[str, Any]] = []
        for _ in range(args.repetitions):
            before = run(args.before_tree, args.before_shim, str(setup), str(load))
            after = run(args.after_tree, args.after_shim, str(setup), str(load))
            runs.append({"before": before, "after": after})
            print(json.dumps(runs[-1]), file=sys.stderr)
    print("| measure | before | after | after / before (paired) |")
    print("|---|---|---|---|")
    for key in runs[0]["before"]:
        before = statistics.median(r["before"][key] for r in runs)
        after = statistics.median(r["after"][key] for r in runs)
        ratio = statistics.median(r["after"][key] / r["before"][key] for r in runs)
        unit = "requests/s" if key.startswith("xenstore") else "connections/s"
        print(f"| {key} ({unit}) | {before:.0f} | {after:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
