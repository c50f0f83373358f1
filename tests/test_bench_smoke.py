"""The benchmark suite, in its seconds-long form, so that it cannot rot.

Besides trio-vchan, the socketpair and memcpy, the benchmarks measure two baselines on the
simulated host through tests/interop's shim: Xen's C libxenvchan driven by a C program, and
the same library wrapped with cffi and driven from Trio (bench/cvchan.py); connection setup
and the file-to-file copy have the C program as contender. Where libxenvchan is not installed
the C part is skipped, saying what to install, except under CI (``$CI`` set), which installs
it (.ci/run): there it fails. A baseline that stops producing numbers fails the run.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import missing_xen_tool

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``bench/run.py --smoke`` for the module: its output directory."""
    output = tmp_path_factory.mktemp("bench")
    subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--output", str(output), "--docs", str(output)],
        check=True,
        timeout=600,
    )
    return output


def results(output: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((output / "results.json").read_text())
    return loaded


CELLS = {(w, r) for w in (64, 1024, 65536, 1 << 20) for r in (2048, 65536, 1 << 20)}
MIXED = {(w, 1 << 20) for w in (64, 1024, 65536)}


def c_measured(found: dict[str, Any]) -> None:
    """Skip (outside CI) or fail (under CI) where the C baselines could not run."""
    if found["c_unavailable"] is not None:
        missing_xen_tool(f"the C libxenvchan baselines of the bench: {found['c_unavailable']}")


def check_paired(entry: dict[str, Any], key: str, rates: dict[str, list[float]]) -> None:
    """The ratio ``key`` is the median of the per-repetition ratios of ``rates``."""
    contender, baseline = key.split("/")
    each = [a / b for a, b in zip(rates[contender], rates[baseline], strict=True)]
    assert entry["ratios"][key]["runs"] == pytest.approx(each)
    assert entry["ratios"][key]["median"] == pytest.approx(statistics.median(each))


def test_bench_smoke_produces_results_and_report(smoke: Path) -> None:
    found = results(smoke)
    assert {(e["write"], e["ring"]) for e in found["one_way"]} == CELLS
    for entry in found["one_way"]:
        for name in ("trio_vchan", "socketpair", "memcpy", "trio_vchan_two_way"):
            assert entry["MBps"][name] > 0
            assert len(entry["runs"][name]) == found["plan"]["repetitions"]
        check_paired(entry, "trio_vchan/socketpair", entry["runs"])
    # The rings are what the cells are labelled: the forward ring trio-vchan writes into.
    for ring in found["rings"]:
        assert ring["trio_vchan_write_ring"] == ring["write_size"]
    assert [p["size"] for p in found["round_trips"]] == [1, 64]
    for ping in found["round_trips"]:
        for name in ("trio_vchan", "trio_vchan_busy_poll", "socketpair"):
            assert ping["latency"][name]["median_us"] > 0
    assert found["copy"]["MBps"]["trio_vchan"] > 0
    assert [(s["count"], s["write_size"]) for s in found["scale"]] == [
        (1, 65536),
        (10, 65536),
        (10, 2048),
    ]
    assert all(s["aggregate_bytes_per_second"] > 0 for s in found["scale"])
    report = (smoke / "performance.md").read_text()
    assert "## Targets" in report
    assert "| 64 KiB | 1 MiB |" in report
    assert "| 64 B | 2 KiB in-page |" in report
    assert "## File-to-file copy" in report
    if importlib.util.find_spec("matplotlib") is not None:  # nox -s bench installs it
        assert (smoke / "performance.png").stat().st_size > 0


def test_bench_smoke_measures_the_c_baselines(smoke: Path) -> None:
    found = results(smoke)
    c_measured(found)
    for ring in found["rings"]:
        assert 1 << ring["c_orders"]["write"] == ring["trio_vchan_write_ring"]
    for entry in found["one_way"]:
        mixed = (entry["write"], entry["ring"]) in MIXED
        names = ["c", "wrapper"] + (["trio_vchan_to_c", "c_to_trio_vchan"] if mixed else [])
        for name in names:
            assert entry["MBps"][name] > 0, (entry["write"], entry["ring"], name)
        assert ("trio_vchan_to_c" in entry["MBps"]) == mixed
        for key in ("trio_vchan/c", "trio_vchan/wrapper", "wrapper/c"):
            check_paired(entry, key, entry["runs"])
    for ping in found["round_trips"]:
        for name in ("c", "c_busy_poll", "wrapper"):
            assert ping["latency"][name]["median_us"] > 0
        medians = ping["median_runs_us"]
        # Times: the baseline's over the contender's, so that above 1 is faster.
        each = [b / a for a, b in zip(medians["trio_vchan"], medians["wrapper"], strict=True)]
        assert ping["ratios"]["trio_vchan/wrapper"]["runs"] == pytest.approx(each)
    copy = found["copy"]
    assert copy["MBps"]["c"] > 0
    rates = {n: [copy["bytes"] / s / 1e6 for s in each] for n, each in copy["seconds"].items()}
    check_paired(copy, "trio_vchan/c", rates)
    report = (smoke / "performance.md").read_text()
    assert "every cell: trio-vchan >= 1.0x the wrapper" in report
    assert "file-to-file copy: `trio-vchan cat` >= 0.5x C" in report
    assert "not measured" not in report
    assert "### Mixed pairs: which side bounds" in report


def test_bench_smoke_measures_trio_vchan_setup(smoke: Path) -> None:
    setup = results(smoke)["setup"]
    for kind in ("sequential", "concurrent"):
        assert len(setup[kind]["runs"]) == setup["repetitions"]
        assert all(run["trio_vchan_cps"] > 0 for run in setup[kind]["runs"])
        assert setup[kind]["trio_vchan"]["median_cps"] > 0
    assert setup["concurrent"]["ports"] > 1
    times = setup["sequential"]["trio_vchan"]["latency"]
    assert 0 < times["min_ms"] <= times["median_ms"] <= times["p99_ms"] <= times["max_ms"]
    report = (smoke / "performance.md").read_text()
    assert "## Connection setup: trio-vchan against C libxenvchan" in report
    assert "sequential setup: trio-vchan >= 1.0x C libxenvchan" in report


def test_bench_smoke_measures_c_libxenvchan_setup(smoke: Path) -> None:
    setup = results(smoke)["setup"]
    reason = setup["c_unavailable"]
    if reason is not None:
        missing_xen_tool(f"the C libxenvchan contender of the setup benchmark: {reason}")
    for kind in ("sequential", "concurrent"):
        for run in setup[kind]["runs"]:
            assert run["c_cps"] > 0
            assert run["ratio"] == pytest.approx(run["trio_vchan_cps"] / run["c_cps"])
            assert run["wrapper_cps"] > 0
            assert run["ratio_wrapper"] == pytest.approx(run["trio_vchan_cps"] / run["wrapper_cps"])
        assert setup[kind]["median_ratio"] > 0
        assert setup[kind]["median_ratio_wrapper"] > 0
    times = setup["sequential"]["c"]["latency"]
    assert 0 < times["min_ms"] <= times["median_ms"] <= times["p99_ms"] <= times["max_ms"]
    report = (smoke / "performance.md").read_text()
    assert "| sequential setup |" in report
    assert "| C libxenvchan |" in report
    assert "| wrapper |" in report
