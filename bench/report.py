"""Turn bench/run.py's results into docs/performance.md and docs/performance.png."""

from __future__ import annotations

import statistics
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


#: How the report names each contender of bench/run.py.
NAMES = {
    "trio_vchan": "trio-vchan",
    "trio_vchan_busy_poll": "trio-vchan busy-poll",
    "trio_vchan_messages": "trio-vchan nowait",
    "trio_vchan_into": "trio-vchan receive_into",
    "wrapper": "wrapper",
    "c": "C",
    "c_busy_poll": "C busy-poll",
    "socketpair": "socketpair",
    "memcpy": "memcpy",
    "trio_vchan_to_c": "trio-vchan -> C",
    "c_to_trio_vchan": "C -> trio-vchan",
    "trio_vchan_two_way": "two-way trio-vchan",
}
ONE_WAY_COLUMNS = (
    "trio_vchan",
    "trio_vchan_into",
    "trio_vchan_messages",
    "wrapper",
    "c",
    "socketpair",
    "memcpy",
)
ONE_WAY_RATIOS = (
    "trio_vchan/wrapper",
    "trio_vchan/c",
    "trio_vchan_into/c",
    "trio_vchan_messages/c",
    "wrapper/c",
    "trio_vchan/socketpair",
)
ROUND_TRIP_COLUMNS = (
    "trio_vchan",
    "wrapper",
    "c",
    "socketpair",
    "trio_vchan_busy_poll",
    "c_busy_poll",
)
ROUND_TRIP_RATIOS = (
    "trio_vchan/wrapper",
    "trio_vchan/socketpair",
    "trio_vchan/c",
    "trio_vchan_busy_poll/c",
    "wrapper/c",
)


def ratio_name(key: str) -> str:
    contender, baseline = key.split("/")
    return f"{NAMES[contender]} / {NAMES[baseline]}"


def one_way(results: dict[str, Any], write: int, ring: int) -> dict[str, Any]:
    return next(r for r in results["one_way"] if r["write"] == write and r["ring"] == ring)


def ring_label(results: dict[str, Any], ring: int) -> str:
    """The forward ring of the cells asking for ``ring``, as both implementations use it."""
    checked = next(r for r in results["rings"] if r["write_size"] == ring)
    used = checked["trio_vchan_write_ring"]
    return f"{size(used)} in-page" if used < 4096 else size(used)


def ratio(entry: dict[str, Any], key: str) -> float | None:
    found = entry["ratios"].get(key)
    return None if found is None else float(found["median"])


def times(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f}x"


SETUP_KINDS = ("sequential", "concurrent")


def setup_name(results: dict[str, Any], kind: str) -> str:
    ports = results["setup"][kind]["ports"]
    return "sequential setup" if kind == "sequential" else f"{ports} concurrent setups"


#: (target, measured, met, margin): margin is measured / target for "at least" targets (above
#: 1 met), None where not measured.
Target = tuple[str, str, bool | None, float | None]


def at_least(target: str, measured: float | None, goal: float, shown: str = "") -> Target:
    if measured is None:
        return (target, "not measured", None, None)
    return (target, shown or f"{measured:.2f}x", measured >= goal, measured / goal)


def setup_targets(results: dict[str, Any]) -> list[Target]:
    """trio-vchan sets up connections at least as fast as C libxenvchan (None: not measured)."""
    setup = results.get("setup")
    if setup is None:
        return []
    rows: list[Target] = []
    for kind in SETUP_KINDS:
        target = f"{setup_name(results, kind)}: trio-vchan >= 1.0x C libxenvchan"
        rows.append(at_least(target, setup[kind]["median_ratio"], 1.0))
    return rows


def worst(results: dict[str, Any], key: str, writes: tuple[int, ...] = ()) -> tuple[float, str]:
    """The lowest paired ratio ``key`` over the one-way cells (of ``writes``), and where."""
    found = [
        (r, f"{size(e['write'])} / {ring_label(results, e['ring'])}")
        for e in results["one_way"]
        if (not writes or e["write"] in writes) and (r := ratio(e, key)) is not None
    ]
    return min(found) if found else (float("nan"), "")


def issue_targets(results: dict[str, Any]) -> list[Target]:
    """The data path's targets against C libxenvchan and the wrapper, as paired medians."""
    rows: list[Target] = []
    measured = results["c_unavailable"] is None
    for writes, goal in (((), 1.0), ((64,), 1.2), ((KIB,), 1.2)):
        where = "every cell" if not writes else f"{size(writes[0])} writes, every ring"
        lowest, cell = worst(results, "trio_vchan/wrapper", writes)
        shown = f"{lowest:.2f}x (lowest, at {cell})"
        target = f"{where}: trio-vchan >= {goal:.1f}x the wrapper"
        rows.append(at_least(target, lowest if measured else None, goal, shown))
    ping = next(p for p in results["round_trips"] if p["size"] == 1)
    latency = ping["latency"]
    for baseline in ("wrapper", "socketpair"):
        value = ratio(ping, f"trio_vchan/{baseline}")
        shown = (
            f"{latency['trio_vchan']['median_us']:.1f} vs {latency[baseline]['median_us']:.1f} us"
            if value is not None
            else ""
        )
        target = f"1-byte round trip no slower than the {NAMES[baseline]}'s"
        rows.append(at_least(target, value, 1.0, shown))
    for write, goal in ((MIB, 0.8), (64 * KIB, 0.4)):
        entry = one_way(results, write, MIB)
        target = f"{size(write)} writes, 1 MiB rings: trio-vchan >= {goal}x C"
        rows.append(at_least(target, ratio(entry, "trio_vchan/c"), goal))
        target = f"{size(write)} writes, 1 MiB rings, receive_into: trio-vchan >= {goal}x C"
        rows.append(at_least(target, ratio(entry, "trio_vchan_into/c"), goal))
    for write, goal in ((64, 0.03), (KIB, 0.1)):
        lowest, cell = worst(results, "trio_vchan_messages/c", (write,))
        shown = f"{lowest:.3f}x (lowest, at {cell})" if measured else ""
        target = f"{size(write)} messages (send_nowait, receive_into_nowait): >= {goal}x C"
        rows.append(at_least(target, lowest if measured else None, goal, shown))
    value = ratio(ping, "trio_vchan_busy_poll/c")
    shown = (
        f"{latency['trio_vchan_busy_poll']['median_us']:.1f} vs {latency['c']['median_us']:.1f} us"
        if value is not None
        else ""
    )
    rows.append(
        at_least("busy-poll 1-byte round trip within 4x C's blocking one", value, 0.25, shown)
    )
    copy = ratio(results["copy"], "trio_vchan/c")
    rows.append(at_least("file-to-file copy: `trio-vchan cat` >= 0.5x C", copy, 0.5))
    return rows


def targets(results: dict[str, Any]) -> list[Target]:
    """Every target: the data path's against C and the wrapper, then this library's own."""
    rows = issue_targets(results)
    big = one_way(results, 64 * KIB, MIB)
    rows.append(
        at_least(
            "64 KiB writes, 1 MiB rings: >= 3x socketpair", ratio(big, "trio_vchan/socketpair"), 3
        )
    )
    for entry in results["one_way"]:
        if entry["ring"] == MIB:
            target = f"{size(entry['write'])} writes, 1 MiB rings: >= 1.5x socketpair"
            rows.append(at_least(target, ratio(entry, "trio_vchan/socketpair"), 1.5))
    latency = next(p for p in results["round_trips"] if p["size"] == 1)["latency"]
    vchan, busy = latency["trio_vchan"]["median_us"], latency["trio_vchan_busy_poll"]["median_us"]
    rows.append(
        at_least(
            "busy-poll halves the 1-byte round trip",
            vchan / busy,
            2.0,
            f"{busy:.1f} vs {vchan:.1f} us",
        )
    )
    # Like with like: the rows of one ring size (the first listed, 64 KiB rings).
    first = results["scale"][0]
    scale = {
        s["count"]: s["aggregate_bytes_per_second"]
        for s in results["scale"]
        if s["write_size"] == first["write_size"] and "not_run" not in s
    }
    if 1 in scale and max(scale) > 1:
        most = max(scale)
        target = f"{most} vchans keep >= 0.5x the throughput of one"
        rows.append(at_least(target, scale[most] / scale[1], 0.5))
    return [*rows, *setup_targets(results)]


def margin(ok: bool | None, factor: float | None) -> str:
    """By how much a target is met or missed."""
    if ok is None or factor is None:
        return ""
    if ok:
        return f"{(factor - 1) * 100:.0f}% to spare"
    return f"needs {1 / factor:.2f}x"


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
    lines = ["", "## Connection setup: trio-vchan against C libxenvchan and the wrapper", ""]
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
        " `libxenmisc4.17`) through the package's Xen-library shim ([interop](interop.md));"
        " concurrent ones are threads of one process. The server calls"
        " `libxenvchan_server_init()` per connection, as `vchan-socket-proxy` does; the client"
        " connects as"
        " `vchan-socket-proxy` does (watch the path, `libxenvchan_client_init()` each time it"
        " fires). The server removes its advertisement once its client is in (what"
        " `libxenvchan_close()` does last, done earlier, as trio-vchan does). Otherwise a"
        " client can find the previous connection's advertisement and bind its port number,"
        " by then another server's, and on the simulated host that port stays closed once the"
        " client unbinds it, where Xen returns it to unbound.",
        bullet=True,
    )
    lines += wrap(
        "**wrapper** (`bench/cvchan.py`): the same C library from Trio, connecting and serving"
        " as the C program does (a XenStore watch, `libxenvchan_server_init()` per connection,"
        " the advertisement removed once the client is in); the calls that talk to XenStore"
        " run in threads, the waits are on the watch's and the event channel's fds.",
        bullet=True,
    )
    lines.append("")
    lines += wrap(
        f"Each of {setup['repetitions']} repetitions runs trio-vchan, then C, then the"
        " wrapper; the ratios are"
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
        " | wrapper (connections/s) | trio-vchan / C | per repetition | trio-vchan / wrapper |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in SETUP_KINDS:
        entry = setup[kind]
        trio_cps = f"{entry['trio_vchan']['median_cps']:.0f}"
        if entry["c"] is None:
            c_cps = wrapper_cps = ratio = each = wrapper_ratio = "not measured"
        else:
            c_cps = f"{entry['c']['median_cps']:.0f}"
            wrapper_cps = f"{entry['wrapper']['median_cps']:.0f}"
            ratio = f"{entry['median_ratio']:.2f}x"
            each = ", ".join(f"{run['ratio']:.2f}" for run in entry["runs"])
            wrapper_ratio = f"{entry['median_ratio_wrapper']:.2f}x"
        lines.append(
            f"| {setup_name(results, kind)} | {trio_cps} | {c_cps} | {wrapper_cps} | {ratio}"
            f" | {each} | {wrapper_ratio} |"
        )
    lines += [
        "",
        "| sequential, per connection (ms) | median | p99 | min | max |",
        "|---|---|---|---|---|",
    ]
    for name, label in (
        ("trio_vchan", "trio-vchan"),
        ("c", "C libxenvchan"),
        ("wrapper", "wrapper"),
    ):
        if sequential.get(name) is not None:
            times = sequential[name]["latency"]
            quantiles = ("median_ms", "p99_ms", "min_ms", "max_ms")
            lines.append(f"| {label} | " + " | ".join(f"{times[q]:.2f}" for q in quantiles) + " |")
    return lines


def cell(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def one_way_section(results: dict[str, Any]) -> list[str]:
    """The one-way cells: every contender's MB/s and the paired ratios."""
    rings = results["rings"]
    lines = ["", "## One-way throughput (MB/s)", ""]
    lines += wrap(
        "The server sends, the client receives; *ring* is the ring the data goes through, as"
        " both implementations use it (checked in the run: trio-vchan's free space on an empty"
        " ring, libxenvchan's orders). The server asks for these minimum sizes (read / write): "
        + ", ".join(f"{r['read_size']} / {r['write_size']}" for r in rings)
        + "; libxenvchan_server_init() puts rings of 1 and 2 KiB into the shared page only"
        " when both fit, so the smallest cell asks for 1024 back and 2048 forward. Ratios are"
        " medians of the per-repetition ratios (each contender over its baseline of the same"
        " repetition), so they need not equal the ratio of the medians shown."
    )
    header = [NAMES[c] for c in (*ONE_WAY_COLUMNS, "trio_vchan_two_way")]
    lines += [
        "",
        "| write | ring | " + " | ".join(header) + " |",
        "|---|---|" + "---|" * len(header),
    ]
    for entry in results["one_way"]:
        rates = entry["MBps"]
        cells = [cell(rates.get(name)) for name in (*ONE_WAY_COLUMNS, "trio_vchan_two_way")]
        label = f"| {size(entry['write'])} | {ring_label(results, entry['ring'])} | "
        lines.append(label + " | ".join(cells) + " |")
    lines += ["", "### Paired ratios", ""]
    header = [ratio_name(k) for k in ONE_WAY_RATIOS]
    lines += ["| write | ring | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(header)]
    for entry in results["one_way"]:
        # "" where the contender does not run (the message calls run at small writes only)
        cells = [
            times(ratio(entry, key)) if key.split("/")[0] in entry["MBps"] else ""
            for key in ONE_WAY_RATIOS
        ]
        label = f"| {size(entry['write'])} | {ring_label(results, entry['ring'])} | "
        lines.append(label + " | ".join(cells) + " |")
    mixed = [e for e in results["one_way"] if "trio_vchan_to_c" in e["MBps"]]
    if mixed:
        lines += ["", "### Mixed pairs: which side bounds", ""]
        lines += wrap(
            "One end trio-vchan, the other C libxenvchan (the C program), in the same"
            " repetitions as the cells above. When trio-vchan -> C is as slow as trio-vchan"
            " at both ends, the trio-vchan sender bounds; when C -> trio-vchan is, the"
            " receiver does."
        )
        lines += [
            "",
            "| write | ring | trio-vchan -> trio-vchan | trio-vchan -> C | C -> trio-vchan"
            " | C -> C | trio-vchan -> C / C | C -> trio-vchan / C |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for entry in mixed:
            rates = entry["MBps"]
            names = ("trio_vchan", "trio_vchan_to_c", "c_to_trio_vchan", "c")
            cells = [cell(rates.get(n)) for n in names]
            cells += [times(ratio(entry, k)) for k in ("trio_vchan_to_c/c", "c_to_trio_vchan/c")]
            label = f"| {size(entry['write'])} | {ring_label(results, entry['ring'])} | "
            lines.append(label + " | ".join(cells) + " |")
    return lines


def round_trip_section(results: dict[str, Any]) -> list[str]:
    lines = ["", "## Round trips (microseconds)", ""]
    lines += wrap(
        "The client sends a message and waits for the server to send it back, rings of"
        " 64 KiB. *Busy-poll*: trio-vchan's `busy_poll` (50 us: spin that long before"
        " waiting for an event), and the C program spinning on `libxenvchan_data_ready()`"
        " as long. Ratios are paired medians of the per-repetition medians, baseline time"
        " over contender time (above 1: the contender is faster)."
    )
    pings = results["round_trips"]
    header = [f"{size(p['size'])} {q}" for p in pings for q in ("median", "p99")]
    lines += ["", "| contender | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for name in ROUND_TRIP_COLUMNS:
        if all(name in p["latency"] for p in pings):
            cells = [cell(p["latency"][name][q], 1) for p in pings for q in ("median_us", "p99_us")]
            lines.append(f"| {NAMES[name]} | " + " | ".join(cells) + " |")
    header = [size(p["size"]) for p in pings]
    lines += ["", "| paired ratio | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for key in ROUND_TRIP_RATIOS:
        lines.append(
            f"| {ratio_name(key)} | " + " | ".join(times(ratio(p, key)) for p in pings) + " |"
        )
    return lines


def copy_section(results: dict[str, Any]) -> list[str]:
    copy = results["copy"]
    lines = ["", "## File-to-file copy", ""]
    lines += wrap(
        f"{size(copy['bytes'])} of random data from a file in domain 1 to a file in domain 2"
        f" (rings of {size(copy['ring'])}), as `scripts/demo-transfer.sh` does, timed from"
        " starting both programs until both have exited (process start-up included: the job"
        " as a user times it); the copy is compared with the original after each run."
        " **trio-vchan**: `trio-vchan cat -l` writing its standard output to the file and"
        " `trio-vchan cat` reading the original from its standard input. **C**:"
        " `tests/interop/vchan_bench.c` (`receive-file`: `libxenvchan_read()` into"
        " `write()`; `send-file`: `read()` into `libxenvchan_write()`, 1 MiB at a time)."
    )
    rates = copy["MBps"]
    lines += [
        "",
        "| trio-vchan MB/s | C MB/s | trio-vchan / C | trio-vchan seconds | C seconds |",
        "|---|---|---|---|---|",
    ]
    seconds = {name: statistics.median(each) for name, each in copy["seconds"].items()}
    lines.append(
        f"| {cell(rates.get('trio_vchan'))} | {cell(rates.get('c'))}"
        f" | {times(ratio(copy, 'trio_vchan/c'))} | {cell(seconds.get('trio_vchan'), 2)}"
        f" | {cell(seconds.get('c'), 2)} |"
    )
    return lines


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# Performance",
        "",
        "Written by `nox -s bench` (`bench/run.py`); every number below comes from one run on",
        f"one machine ({machine['cpus']} CPUs, Python {machine['python']}, {machine['platform']}).",
        "",
    ]
    lines += wrap(
        "Throughput is between two processes on a simulated Xen host, measured at the receiver"
        " from its first byte to its last. The contenders: **trio-vchan**; **C**, Xen's C"
        " libxenvchan (Debian's `libxenmisc4.17`) driven by a C program"
        " (`tests/interop/vchan_bench.c`, blocking libxenvchan calls), the reference; the"
        " **wrapper**, the same C library wrapped with cffi and driven from Trio as a careful"
        " Python user would (`bench/cvchan.py`: non-blocking libxenvchan calls,"
        " `trio.lowlevel.wait_readable` on `libxenvchan_fd_for_select()`, a checkpoint per"
        " call as trio's sockets do), which shows how much of the gap to C is Trio's and how"
        " much is trio-vchan's; **socketpair**, Trio streams over a Unix socketpair between"
        " two processes; and **memcpy**, an in-process copy of the same blocks (the bound)."
        " The C contenders join the simulated host through the package's Xen-library shim"
        " ([interop](interop.md)). In each repetition of a cell (there are"
        f" {results['plan']['repetitions']}) the contenders take turns;"
        " a figure is the median over the repetitions, and a ratio the median of the ratios"
        " taken per repetition (paired). Raw data: `bench/results.json`."
    )
    if results["c_unavailable"] is not None:
        lines += ["", *wrap(f"C libxenvchan was not measured: {results['c_unavailable']}.")]
    lines += [
        "",
        "![throughput](performance.png)",
        "",
        "## Targets",
        "",
        "| target | measured | met | by how much |",
        "|---|---|---|---|",
    ]
    lines += [f"| {t} | {m} | {met(ok)} | {margin(ok, f)} |" for t, m, ok, f in targets(results)]
    lines += one_way_section(results)
    lines += round_trip_section(results)
    lines += copy_section(results)
    lines += [
        "",
        "## Many vchans in one process",
        "",
        "A client process (domain 2) connects this many vchans at once to a server process"
        " (domain 0), both on the simulated host, and receives on all of them; RSS and fds are"
        " the client's, per vchan. A vchan's fds are its event channel's two eventfds: its page"
        " and rings are mapped and keep none (on Xen one `/dev/xen/evtchn` file serves every"
        " port of a process). The rows with both rings in the shared page need one grant per"
        " vchan (a 64 KiB ring takes 16 more: 10,000 such vchans would not fit a domain's"
        " 32768 grant refs, on Xen as here); the host is started with 16384 event channels per"
        " domain (`--max-event-channels`; Xen's 2-level ABI allows 4096).",
        "",
        "| vchans | ring | aggregate MB/s | connects/s | closes/s | RSS per vchan"
        " | fds per vchan |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["scale"]:
        forward = row["write_size"]  # the server sends
        rings = f"{size(forward)} in-page" if forward < 4096 else size(forward)
        if "not_run" in row:
            lines.append(f"| {row['count']} | {rings} | not run: {row['not_run']} | | | | |")
            continue
        lines.append(
            f"| {row['count']} | {rings} | {row['aggregate_bytes_per_second'] / 1e6:.0f} "
            f"| {row['connects_per_second']:.0f} | {row['closes_per_second']:.0f} "
            f"| {row['rss_per_connection'] / KIB:.0f} KiB | {row['fds_per_connection']:.1f} |"
        )
    if "setup" in results:
        lines += setup_section(results)
    return "\n".join(lines) + "\n"


#: The plot's lines: contender, style.
PLOTTED = (
    ("trio_vchan", "o-"),
    ("trio_vchan_messages", "x-."),
    ("wrapper", "^-"),
    ("c", "D-"),
    ("socketpair", "s--"),
    ("memcpy", ":"),
)


def plot(results: dict[str, Any], path: Path) -> bool:
    """Throughput against write size, one panel per ring; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    writes = sorted({e["write"] for e in results["one_way"]})
    rings = sorted({e["ring"] for e in results["one_way"]})
    figure, panels = plt.subplots(1, len(rings), figsize=(5 * len(rings), 5), sharey=True)
    for axes, ring in zip(panels, rings, strict=True):
        for name, style in PLOTTED:
            rates = [one_way(results, w, ring)["MBps"].get(name) for w in writes]
            if any(r is not None for r in rates):
                axes.plot(writes, [r or float("nan") for r in rates], style, label=NAMES[name])
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xticks(writes, [size(w) for w in writes])
        axes.set_xlabel("write size")
        axes.set_title(f"{ring_label(results, ring)} ring")
        axes.grid(True, which="both", alpha=0.3)
    panels[0].set_ylabel("MB/s (log)")
    panels[0].legend()
    figure.suptitle("One-way throughput between two processes")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


#: Hand-written analysis (where the time goes, why a target is missed), appended to the
#: report as it is, so that regenerating the tables keeps it.
NOTES = Path(__file__).resolve().parent / "notes.md"


def write_report(results: dict[str, Any], docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    if NOTES.exists():
        text += "\n" + NOTES.read_text()
    (docs / "performance.md").write_text(text)
    plot(results, docs / "performance.png")
