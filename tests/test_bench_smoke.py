"""The benchmark suite, in its seconds-long form, so that it cannot rot.

The connection-setup benchmark has two contenders: trio-vchan, and Xen's C libxenvchan on the
simulated host through tests/interop's shim. Where libxenvchan is not installed the C part is
skipped, saying what to install, except under CI (``$CI`` set), which installs it (.ci/run):
there it fails.
"""

from __future__ import annotations

import json
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


def test_bench_smoke_produces_results_and_report(smoke: Path) -> None:
    found = results(smoke)
    assert {(e["write"], e["ring"]) for e in found["one_way"]} == {
        (w, r) for w in (64, 1024, 65536, 1 << 20) for r in (2048, 65536, 1 << 20)
    }
    for entry in found["one_way"]:
        assert entry["vchan_MBps"] > 0
        assert entry["socketpair_MBps"] > 0
    assert [p["size"] for p in found["ping_pong"]] == [1, 64]
    assert all(p["vchan"]["median_us"] > 0 for p in found["ping_pong"])
    assert [s["count"] for s in found["scale"]] == [1, 10]
    assert all(s["aggregate_bytes_per_second"] > 0 for s in found["scale"])
    report = (smoke / "performance.md").read_text()
    assert "## Targets" in report
    assert "| 64 KiB | 1 MiB |" in report


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
        assert setup[kind]["median_ratio"] > 0
    times = setup["sequential"]["c"]["latency"]
    assert 0 < times["min_ms"] <= times["median_ms"] <= times["p99_ms"] <= times["max_ms"]
    report = (smoke / "performance.md").read_text()
    assert "| sequential setup |" in report
    assert "| C libxenvchan |" in report
