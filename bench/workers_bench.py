"""Many workers, one queue: windows/s and rows/s of one backfill at 1, 2 and 4 concurrent runs.

    .venv/bin/python bench/workers_bench.py [--windows 40] [--window-size 250] [--runs 1 2 4]
        [--dequeue-interval SECONDS]

For each concurrency: a fresh PostgreSQL database for the Dagster instance
(`deploy/dagster.postgres.yaml` with the queue at N), a SQLite source with `windows` full
windows, exports to S3 (moto in server mode, its own process), `dagster-webserver` and
`dagster-daemon`, then one backfill of every window with the default process launcher. The
clock runs from the first run's start to the last run's end (Dagster's own run times). Each
level must have exported every window exactly once, windows and watermarks contiguous to the
log's end, every object matching its manifest, no lease left (as the many-workers test checks);
a level that did not fails the bench instead of giving a figure. The queue's dequeue interval
is Dagster's default (5 s) unless given. Writes `bench/results/<date>-workers.json`. Not part of
the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

import boto3
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from objstore_bench import moto_server  # noqa: E402

from subscription_export_tests.defs.many_workers import (  # noqa: E402
    assert_each_window_once,
    deployment,
    max_overlap,
    seconds_between,
)

RESULTS = REPO / "bench" / "results"
PG = os.environ.get("SUBSCRIPTION_EXPORT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def one_level(
    runs: int, windows: int, size: int, root: Path, dequeue_interval_s: int | None
) -> dict[str, object]:
    name = f"dagster_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    bucket = f"workers-{runs}-{uuid.uuid4().hex[:6]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    env = {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}
    try:
        with deployment(
            root / f"runs-{runs}",
            PG.rsplit("/", 1)[0] + f"/{name}",
            f"s3://{bucket}/exports",
            env,
            windows,
            size,
            runs,
            dequeue_interval_s,
        ) as d:
            results = d.wait_for_runs(d.backfill(), 3600)
            assert_each_window_once(d.project.settings, d.windows, results)
    finally:
        with psycopg.connect(PG, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    ok = [r for r in results if r["status"] == "SUCCESS"]
    seconds = seconds_between(results)
    return {
        "concurrent_runs": runs,
        "windows": windows,
        "rows": windows * size,
        "succeeded": len(ok),
        "seconds": round(seconds, 2),
        "windows_per_s": round(windows / seconds, 3),
        "rows_per_s": round(windows * size / seconds, 1),
        "max_overlap_seen": max_overlap(results),
        "exported_once_contiguous": True,  # assert_each_window_once passed
        "dequeue_interval_s": dequeue_interval_s or 5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--window-size", type=int, default=250)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dequeue-interval", type=int, default=None)
    args = parser.parse_args()
    levels = []
    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench-secret",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=endpoint,
        )
        for runs in args.runs:
            level = one_level(
                runs, args.windows, args.window_size, Path(tmp), args.dequeue_interval
            )
            print(json.dumps(level), flush=True)
            levels.append(level)
    base = levels[0]["windows_per_s"]
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "levels": levels,
        "speedup_vs_first": {
            str(level["concurrent_runs"]): round(float(level["windows_per_s"]) / float(base), 2)
            for level in levels
        },
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{dt.date.today().isoformat()}-workers.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
