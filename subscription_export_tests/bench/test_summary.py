"""`bench/summary.py`: issue 15's five rows gathered from the newest result of each bench."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "summary.py"


def _write(folder: Path, name: str, data: dict[str, Any]) -> None:
    (folder / name).write_text(json.dumps(data))


def _export(ratio: float, incremental_s: float) -> dict[str, Any]:
    return {
        "changes": 1_000_000,
        "date": "2026-11-30",
        "formats": {"parquet": {"rows_per_s": round(200_000 * ratio)}},
        "baselines": {"copy_to_devnull": {"rows_per_s": 200_000}},
        "parquet_vs_copy": ratio,
        "peak_rss_mb": 200.0,
        "incremental_10k_s": incremental_s,
    }


def _delivery(rates: dict[str, int]) -> dict[str, Any]:
    results: dict[str, Any] = {
        f"{name}.deliver_window": {"records_per_s": rate} for name, rate in rates.items()
    }
    results["reconcile"] = {"edits": 200, "edits_per_s": 2500, "statements_per_edit": 2.5}
    return {"date": "2026-11-30T10:00:00+00:00", "params": {"latency_ms": 10.0}, "results": results}


def _summary(results: Path) -> dict[str, Any]:
    out = results / "out.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--results", str(results), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return {row["measure"]: row for row in json.loads(out.read_text())["rows"]}


def test_each_row_comes_from_the_newest_result_of_its_bench(tmp_path: Path) -> None:
    _write(tmp_path, "2026-11-29-postgresql-1000000.json", _export(0.7, 0.4))
    _write(tmp_path, "2026-11-30-postgresql-1000000.json", _export(1.05, 0.25))
    _write(tmp_path, "2026-11-30-sqlite-1000000.json", _export(0.1, 9.0))  # not the PG row
    _write(
        tmp_path,
        "2026-11-30-delivery.json",
        _delivery({"erp": 12_000, "crm": 9_000, "accounting": 15_000}),
    )

    rows = _summary(tmp_path)

    assert rows["export_vs_copy"]["ratio"] == 1.05
    assert rows["export_vs_copy"]["source"] == "2026-11-30-postgresql-1000000.json"
    assert rows["export_vs_copy"]["met"] is True
    assert rows["incremental_cycle"]["seconds"] == 0.25
    assert rows["delivery"]["records_per_s"] == {"erp": 12_000, "crm": 9_000, "accounting": 15_000}
    assert rows["delivery"]["met"] is False  # the CRM misses 10k/s: the slowest decides
    assert rows["reconcile"]["met"] is True
    # No capture result: the row is there and says so, it is not silently left out.
    assert rows["capture_overhead"]["status"] == "missing"
    assert "met" not in rows["capture_overhead"]


def test_the_capture_row_takes_the_ratio_the_bench_computed_in_its_run(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "2026-11-30-capture.json",
        {
            "date": "2026-11-30T10:00:00+00:00",
            "median_tx_per_s": {"off": 6600.0, "capture_seq": 6400.0},
            "ratio_to_off": {"capture_seq": 0.97},
            "capture_seq_ratio_per_round": [0.96, 0.98],
            "parts": {"sequencer": 0.01},
        },
    )

    row = _summary(tmp_path)["capture_overhead"]

    assert (row["ratio"], row["met"], row["tx_per_s_off"]) == (0.97, True, 6600.0)


def test_the_capture_row_carries_the_server_cpu_ratio_when_the_bench_measured_it(
    tmp_path: Path,
) -> None:
    _write(
        tmp_path,
        "2026-11-30-capture.json",
        {
            "date": "2026-11-30T10:00:00+00:00",
            "params": {"synchronous_commit": "off"},
            "median_tx_per_s": {"off": 12000.0, "capture_seq": 6000.0},
            "ratio_to_off": {"capture_seq": 0.5},
            "cpu_ratio_to_off": {"capture_seq": 0.42},
            "capture_seq_ratio_per_round": [0.5],
            "parts": {"sequencer": 0.09},
        },
    )

    row = _summary(tmp_path)["capture_overhead"]

    assert (row["ratio"], row["cpu_ratio"], row["synchronous_commit"]) == (0.5, 0.42, "off")
    assert row["met"] is False
