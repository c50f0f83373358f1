"""Turn bench/run.py's results into docs/performance.md and docs/performance.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

KIB, MIB = 1 << 10, 1 << 20


def size(n: int) -> str:
    if n >= MIB:
        return f"{n // MIB} MiB"
    if n >= KIB:
        return f"{n // KIB} KiB"
    return f"{n} B"


def one_way(results: dict[str, Any], write: int, ring: int) -> dict[str, Any]:
    return next(r for r in results["one_way"] if r["write"] == write and r["ring"] == ring)


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the goals this library sets itself."""
    rows = []
    big = one_way(results, 64 * KIB, MIB)
    ratio = big["vchan_MBps"] / big["socketpair_MBps"]
    rows.append(("64 KiB writes, 1 MiB rings: >= 3x socketpair", f"{ratio:.2f}x", ratio >= 3))
    for entry in results["one_way"]:
        if entry["ring"] != MIB:
            continue
        ratio = entry["vchan_MBps"] / entry["socketpair_MBps"]
        rows.append(
            (
                f"{size(entry['write'])} writes, 1 MiB rings: >= 1.5x socketpair",
                f"{ratio:.2f}x",
                ratio >= 1.5,
            )
        )
    ping = next(p for p in results["ping_pong"] if p["size"] == 1)
    vchan, busy, sock = (ping[k]["median_us"] for k in ("vchan", "vchan_busy_poll", "socketpair"))
    rows.append(
        ("1-byte round trip <= socketpair's", f"{vchan:.1f} vs {sock:.1f} us", vchan <= sock)
    )
    rows.append(
        (
            "busy-poll halves the 1-byte round trip",
            f"{busy:.1f} vs {vchan:.1f} us",
            busy <= vchan / 2,
        )
    )
    scale = {s["count"]: s["aggregate_bytes_per_second"] for s in results["scale"]}
    if 1 in scale and max(scale) > 1:
        most = max(scale)
        ratio = scale[most] / scale[1]
        rows.append(
            (f"{most} vchans keep >= 0.5x the throughput of one", f"{ratio:.2f}x", ratio >= 0.5)
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# Performance",
        "",
        "Written by `nox -s bench` (`bench/run.py`); every number below comes from one run on",
        f"one machine ({machine['cpus']} CPUs, Python {machine['python']}, {machine['platform']}).",
        "Throughput is between two processes on a simulated Xen host, measured at the receiver",
        "from its first byte to its last; each figure is the median of",
        f"{results['plan']['repetitions']} repetitions. Baselines from the same run: Trio streams",
        "over a Unix socketpair between two processes, and an in-process memory copy of the",
        "same blocks (the bound). Raw data: `bench/results.json`.",
        "",
        "![throughput](performance.png)",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets(results)]
    lines += [
        "",
        "## One-way throughput (MB/s)",
        "",
        "| write | ring | vchan | socketpair | vchan / socketpair | memcpy | two-way vchan |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in results["one_way"]:
        duplex = next(
            d
            for d in results["two_way"]
            if d["write"] == entry["write"] and d["ring"] == entry["ring"]
        )
        lines.append(
            f"| {size(entry['write'])} | {size(entry['ring'])} | {entry['vchan_MBps']:.0f} "
            f"| {entry['socketpair_MBps']:.0f} "
            f"| {entry['vchan_MBps'] / entry['socketpair_MBps']:.2f}x "
            f"| {entry['memcpy_MBps']:.0f} | {duplex['vchan_MBps']:.0f} |"
        )
    lines += [
        "",
        "## Round trips (microseconds)",
        "",
        "| message | vchan median | vchan p99 | busy-poll median | busy-poll p99 |"
        " socketpair median | socketpair p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for ping in results["ping_pong"]:
        cells = [
            f"{ping[k][q]:.1f}"
            for k in ("vchan", "vchan_busy_poll", "socketpair")
            for q in ("median_us", "p99_us")
        ]
        lines.append(f"| {size(ping['size'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Many vchans in one process",
        "",
        "| vchans | aggregate MB/s | connects/s | closes/s | RSS per vchan | fds per vchan |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["scale"]:
        lines.append(
            f"| {row['count']} | {row['aggregate_bytes_per_second'] / 1e6:.0f} "
            f"| {row['connects_per_second']:.0f} | {row['closes_per_second']:.0f} "
            f"| {row['rss_per_connection'] / KIB:.0f} KiB | {row['fds_per_connection']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    """Throughput against write size; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    writes = sorted({e["write"] for e in results["one_way"]})
    figure, axes = plt.subplots(figsize=(8, 5))
    for ring in sorted({e["ring"] for e in results["one_way"]}):
        axes.plot(
            writes,
            [one_way(results, w, ring)["vchan_MBps"] for w in writes],
            "o-",
            label=f"vchan, {size(ring)} rings",
        )
    axes.plot(
        writes,
        [one_way(results, w, MIB)["socketpair_MBps"] for w in writes],
        "s--",
        label="Trio over a socketpair",
    )
    axes.plot(
        writes,
        [one_way(results, w, MIB)["memcpy_MBps"] for w in writes],
        ":",
        label="memcpy (bound)",
    )
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(writes, [size(w) for w in writes])
    axes.set_xlabel("write size")
    axes.set_ylabel("MB/s (log)")
    axes.set_title("One-way throughput between two processes")
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def write_report(results: dict[str, Any], docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "performance.md").write_text(markdown(results))
    plot(results, docs / "performance.png")
