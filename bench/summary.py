"""Issue 15's table in one file: the latest result of each benchmark, one row per measure.

    .venv/bin/python bench/summary.py [--results bench/results] [--out FILE]

The last step of `make bench`. Each benchmark writes its own `bench/results/<date>-*.json`
(and computes its ratios within its own run: Parquet vs the same run's COPY, trigger on vs off
in one run); this gathers the newest file of each kind into `<date>-summary.json` with five
rows - export vs COPY, capture overhead, delivery per destination, reconcile, incremental
cycle - each with its figures, the figure issue 15 started from, its target, whether it is
met, and the file it came from. A row whose benchmark has no result yet says so (`missing`)
rather than being left out. Prints the table; exits 0 whatever the verdicts (it reports).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DESTINATIONS = ("erp", "crm", "accounting")
_DATED = re.compile(r"^(\d{4}-\d{2}-\d{2})-(.+)\.json$")

Row = dict[str, Any]


def newest(results: Path, kind: Callable[[str], bool]) -> Path | None:
    """The newest result whose name (after the date) `kind` accepts: latest date, then the
    most recently written of that date."""
    found = []
    for path in results.glob("*.json"):
        match = _DATED.match(path.name)
        if match and kind(match.group(2)):
            found.append((match.group(1), path.stat().st_mtime, path))
    return max(found)[2] if found else None


def _load(path: Path | None) -> tuple[dict[str, Any], dict[str, str]] | None:
    if path is None:
        return None
    data = json.loads(path.read_text())
    return data, {"source": path.name, "date": str(data.get("date", path.name[:10]))[:10]}


def _missing(measure: str, bench: str) -> Row:
    return {"measure": measure, "status": "missing", "how": f"run {bench}"}


def export_row(results: Path) -> Row:
    """Parquet export of the PostgreSQL window vs the same run's COPY of the log."""
    loaded = _load(newest(results, lambda k: re.fullmatch(r"postgresql-\d+", k) is not None))
    if loaded is None:
        return _missing("export_vs_copy", "subscription-export bench --source postgresql")
    data, origin = loaded
    ratio = data["parquet_vs_copy"]
    return {
        "measure": "export_vs_copy",
        "changes": data["changes"],
        "parquet_rows_per_s": data["formats"]["parquet"]["rows_per_s"],
        "copy_rows_per_s": data["baselines"]["copy_to_devnull"]["rows_per_s"],
        "ratio": ratio,
        "peak_rss_mb": data["peak_rss_mb"],
        "issue_15_before": {"ratio": 0.78, "peak_rss_mb": 242},
        "target": {"ratio": ">= 1.0", "peak_rss_mb": "<= 256"},
        "met": ratio >= 1.0 and data["peak_rss_mb"] <= 256,
        **origin,
    }


def capture_row(results: Path) -> Row:
    """Single-row UPDATE tx/s with the capture trigger (and sequencer) vs without."""
    loaded = _load(newest(results, lambda k: k == "capture"))
    if loaded is None:
        return _missing("capture_overhead", "bench/capture_bench.py")
    data, origin = loaded
    ratio = data["ratio_to_off"]["capture_seq"]
    return {
        "measure": "capture_overhead",
        "tx_per_s_off": data["median_tx_per_s"]["off"],
        "tx_per_s_on": data["median_tx_per_s"]["capture_seq"],
        "ratio": ratio,
        "ratio_per_round": data["capture_seq_ratio_per_round"],
        "parts": data["parts"],
        # Server CPU per transaction, off's over capture's (absent from older result files).
        "cpu_ratio": data.get("cpu_ratio_to_off", {}).get("capture_seq"),
        "synchronous_commit": data.get("params", {}).get("synchronous_commit", "on"),
        "issue_15_before": {"ratio": 0.82, "tx_per_s_off": 6600, "tx_per_s_on": 5400},
        "target": {"ratio": ">= 0.95"},
        "met": ratio >= 0.95,
        **origin,
    }


def delivery_row(results: Path) -> Row:
    """Records/s of the production path (`deliver_window`) per destination at 10 ms."""
    loaded = _load(newest(results, lambda k: k == "delivery"))
    if loaded is None:
        return _missing("delivery", "bench/delivery_bench.py")
    data, origin = loaded
    windows = {n: data["results"][f"{n}.deliver_window"] for n in DESTINATIONS}
    rates = {n: w["records_per_s"] for n, w in windows.items()}
    cpu = {  # absent from results written before the bench measured CPU time
        n: {side: w.get(f"{side}_cpu_us_per_record") for side in ("client", "sandbox")}
        for n, w in windows.items()
    }
    return {
        "measure": "delivery",
        "records_per_s": rates,
        "cpu_us_per_record": cpu,
        "latency_ms": data["params"]["latency_ms"],
        "issue_15_before": {"erp": 1200, "crm": 12700, "accounting": 18400},
        "target": {"records_per_s": ">= 10000 for every destination"},
        "met": min(rates.values()) >= 10_000,
        **origin,
    }


def reconcile_row(results: Path) -> Row:
    """Remote edits/s and SQL statements per edit of one reconcile run."""
    own = _load(newest(results, lambda k: k == "reconcile"))
    delivery = _load(newest(results, lambda k: k == "delivery"))
    candidates = [c for c in (own, delivery) if c is not None]
    if not candidates:
        return _missing("reconcile", "bench/delivery_bench.py or bench/reconcile_bench.py")
    data, origin = max(candidates, key=lambda c: c[1]["date"])
    figures = data.get("results", {}).get("reconcile", data)
    if "edits_per_s" not in figures:
        return _missing("reconcile", "bench/delivery_bench.py (its result has no reconcile)")
    return {
        "measure": "reconcile",
        "edits_per_s": figures["edits_per_s"],
        "statements_per_edit": figures["statements_per_edit"],
        "edits": figures["edits"],
        "issue_15_before": {"statements_per_edit": "12-15", "edits_per_s": "unmeasured"},
        "target": {"edits_per_s": ">= 2000", "statements_per_edit": "<= 3"},
        "met": figures["edits_per_s"] >= 2000 and figures["statements_per_edit"] <= 3,
        **origin,
    }


def incremental_row(results: Path) -> Row:
    """Seconds of an in-process cycle over 10k changes after the window's history: the median
    of the run's cycles (older results timed one)."""
    loaded = _load(newest(results, lambda k: re.fullmatch(r"postgresql-\d+", k) is not None))
    if loaded is None:
        return _missing("incremental_cycle", "subscription-export bench --source postgresql")
    data, origin = loaded
    seconds = data["incremental_10k_s"]
    return {
        "measure": "incremental_cycle",
        "seconds": seconds,
        "runs_s": data.get("incremental_10k_runs_s", [seconds]),
        "history_changes": data["changes"],
        "issue_15_before": {"seconds": "0.29-0.42"},
        "target": {"seconds": "<= 0.3"},
        "met": seconds <= 0.3,
        **origin,
    }


ROWS = (export_row, capture_row, delivery_row, reconcile_row, incremental_row)


def summary(results: Path) -> dict[str, Any]:
    return {
        "benchmark": "summary",
        "issue": 15,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rows": [row(results) for row in ROWS],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = summary(args.results)
    out = args.out or args.results / f"{dt.date.today().isoformat()}-summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for row in report["rows"]:
        verdict = {True: "meets", False: "MISSES", None: "missing"}[row.get("met")]
        figures = {k: v for k, v in row.items() if k not in ("measure", "met", "target")}
        print(f"{row['measure']:<18} {verdict:<8} {json.dumps(figures, default=str)}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
