"""`subscription-export bench`: the result file keeps the keys results are compared by."""

from __future__ import annotations

import json
from pathlib import Path

from subscription_export_tests.cli_run import run_cli as _run


def test_bench_writes_a_comparable_result_file(tmp_path: Path) -> None:
    results = tmp_path / "results"
    args = ["bench", "--changes", "10000", "--source", "sqlite", "--skip-pandas"]
    out = _run(
        [*args, "--workdir", str(tmp_path / "work"), "--results", str(results)], None, tmp_path
    ).stdout

    [path] = results.glob("*-sqlite-10000.json")
    assert f"written to {path}" in out.replace("\n", "")  # the summary table, then the file
    assert "parquet" in out and "incremental 10k" in out
    assert list((tmp_path / "work").iterdir()) == []  # sources and exports removed
    report = json.loads(path.read_text())
    assert (report["changes"], report["source"]) == (10_000, "sqlite")
    for fmt in ("parquet", "csv", "jsonl"):
        figures = report["formats"][fmt]
        assert figures["rows_per_s"] > 0 and figures["wall_s"] > 0 and figures["bytes"] > 0
    assert 50 < report["peak_rss_mb"] < 4_000
    assert "pandas not importable" in report["peak_rss_process"]
    assert report["baselines"]["copy_to_devnull"]["rows_per_s"] > 0
    assert "pandas_naive" not in report["baselines"]  # --skip-pandas
    runs = report["incremental_10k_runs_s"]
    assert len(runs) == 5 and all(r > 0 for r in runs)
    assert report["incremental_10k_s"] == sorted(runs)[2]  # the median
    assert {"cores", "memory_gb", "versions"} <= set(report["machine"])
