"""The benchmark suite, in its seconds-long form, so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_bench_smoke_produces_results_and_report(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--output", str(tmp_path), "--docs", str(tmp_path)],
        check=True,
        timeout=600,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert {(e["write"], e["ring"]) for e in results["one_way"]} == {
        (w, r) for w in (64, 1024, 65536, 1 << 20) for r in (2048, 65536, 1 << 20)
    }
    for entry in results["one_way"]:
        assert entry["vchan_MBps"] > 0
        assert entry["socketpair_MBps"] > 0
    assert [p["size"] for p in results["ping_pong"]] == [1, 64]
    assert all(p["vchan"]["median_us"] > 0 for p in results["ping_pong"])
    assert [s["count"] for s in results["scale"]] == [1, 10]
    assert all(s["aggregate_bytes_per_second"] > 0 for s in results["scale"])
    report = (tmp_path / "performance.md").read_text()
    assert "## Targets" in report
    assert "| 64 KiB | 1 MiB |" in report
