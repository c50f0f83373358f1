"""Turn bench/run.py's results into docs/performance.md and docs/performance.png."""

from __future__ import annotations

import textwrap
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


SETUP_KINDS = ("sequential", "concurrent")


def setup_name(results: dict[str, Any], kind: str) -> str:
    ports = results["setup"][kind]["ports"]
    return "sequential setup" if kind == "sequential" else f"{ports} concurrent setups"


def setup_targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """trio-vchan sets up connections at least as fast as C libxenvchan (None: not measured)."""
    setup = results.get("setup")
    if setup is None:
        return []
    rows: list[tuple[str, str, bool | None]] = []
    for kind in SETUP_KINDS:
        target = f"{setup_name(results, kind)}: trio-vchan >= 1.0x C libxenvchan"
        ratio = setup[kind]["median_ratio"]
        if ratio is None:
            rows.append((target, f"C not measured: {setup['c_unavailable']}", None))
        else:
            rows.append((target, f"{ratio:.2f}x", ratio >= 1.0))
    return rows


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the goals this library sets itself (met None: not measured)."""
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
    return [*rows, *setup_targets(results)]


def met(ok: bool | None) -> str:
    return "not measured" if ok is None else "yes" if ok else "**no**"


def wrap(text: str, bullet: bool = False) -> list[str]:
    """A Markdown paragraph (or list item) in lines of at most 95 characters."""
    return textwrap.wrap(
        text,
        95,
        initial_indent="- " if bullet else "",
        subsequent_indent="  " if bullet else "",
        break_long_words=False,
        break_on_hyphens=False,
    )


def setup_section(results: dict[str, Any]) -> list[str]:
    """The connection-setup tables: trio-vchan against C libxenvchan."""
    setup = results["setup"]
    sequential, concurrent = setup["sequential"], setup["concurrent"]
    rounds, ports = concurrent["rounds"], concurrent["ports"]
    lines = ["", "## Connection setup: trio-vchan against C libxenvchan", ""]
    lines += wrap(
        "Connect, send 1 byte, receive it back and close, between a server (domain 1) and a"
        " client (domain 2) that are processes on the simulated host; rings of"
        f" {size(setup['ring'])} each way. *Sequential*: one client connects again and again"
        f" ({sequential['connections']} timed connections, after warm-up ones) to a server"
        f" that keeps listening. *Concurrent*: {ports} clients at once, one on each of {ports}"
        f" listening ports, in {rounds} timed round{'s' if rounds != 1 else ''} after an"
        " untimed one; a round starts them all together and ends at the last close."
    )
    lines.append("")
    lines += wrap(
        "**trio-vchan** (`bench/workers.py`): a `VchanListener` per port accepting in a loop,"
        " `trio_vchan.connect()` for each connection; concurrent ones are tasks of one process.",
        bullet=True,
    )
    lines += wrap(
        "**C libxenvchan** (`tests/interop/vchan_setup.c`): Xen's library (Debian's"
        " `libxenmisc4.17`) through the shim of the [interop tests](interop.md); concurrent"
        " ones are threads of one process. The server calls `libxenvchan_server_init()` per"
        " connection, as `vchan-socket-proxy` does; the client connects as"
        " `vchan-socket-proxy` does (watch the path, `libxenvchan_client_init()` each time it"
        " fires). The server removes its advertisement once its client is in (what"
        " `libxenvchan_close()` does last, done earlier, as trio-vchan does). Otherwise a"
        " client can find the previous connection's advertisement and bind its port number,"
        " by then another server's, and on the simulated host that port stays closed once the"
        " client unbinds it, where Xen returns it to unbound.",
        bullet=True,
    )
    lines.append("")
    lines += wrap(
        f"Each of {setup['repetitions']} repetitions runs trio-vchan, then C; the ratio is"
        " taken per repetition (paired), and the table gives medians."
        + (
            " Measured in a later run (`--setup-only`) than the rest."
            if setup.get("separate_run")
            else ""
        )
    )
    lines.append("")
    if setup["c_unavailable"] is not None:
        lines += wrap(f"C libxenvchan was not measured: {setup['c_unavailable']}.")
        lines.append("")
    lines += [
        "| scenario | trio-vchan (connections/s) | C libxenvchan (connections/s)"
        " | trio-vchan / C | per repetition |",
        "|---|---|---|---|---|",
    ]
    for kind in SETUP_KINDS:
        entry = setup[kind]
        trio_cps = f"{entry['trio_vchan']['median_cps']:.0f}"
        if entry["c"] is None:
            c_cps = ratio = each = "not measured"
        else:
            c_cps = f"{entry['c']['median_cps']:.0f}"
            ratio = f"{entry['median_ratio']:.2f}x"
            each = ", ".join(f"{run['ratio']:.2f}" for run in entry["runs"])
        lines.append(f"| {setup_name(results, kind)} | {trio_cps} | {c_cps} | {ratio} | {each} |")
    lines += [
        "",
        "| sequential, per connection (ms) | median | p99 | min | max |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("trio_vchan", "trio-vchan"), ("c", "C libxenvchan")):
        if sequential[name] is not None:
            times = sequential[name]["latency"]
            quantiles = ("median_ms", "p99_ms", "min_ms", "max_ms")
            lines.append(f"| {label} | " + " | ".join(f"{times[q]:.2f}" for q in quantiles) + " |")
    return lines


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
    lines += [f"| {t} | {m} | {met(ok)} |" for t, m, ok in targets(results)]
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
    if "setup" in results:
        lines += setup_section(results)
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
