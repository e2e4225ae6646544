"""The snapshot under load at benchmark size: N existing rows, 4 random writers, the snapshot
CLI SIGKILLed 3 times at random points, then replay == table for every key; on PostgreSQL no
snapshot lock outlives one chunk (pg_locks sampling). The same checker as the suite's 5k-row
test (subscription_export_tests/source/snapshot_load.py). Not part of the test suite.

    python bench/snapshot_load_bench.py --rows 200000 [--chunk-size 2048] [--source both]

Writes bench/results/{date}-snapshot-load-{database}-{rows}.json; exits 1 on a violation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the shared checker lives in the test package

from subscription_export.core.db import engine_for  # noqa: E402
from subscription_export_tests.source.snapshot_load import run_under_load  # noqa: E402

PG_DSN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgresql(rows: int, chunk: int, workdir: Path) -> dict[str, object]:
    schema = f"snapload_{uuid.uuid4().hex[:8]}"
    admin_dsn = PG_DSN.replace("+psycopg", "")
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        return run_under_load(f"{PG_DSN}?options=-csearch_path%3D{schema}", rows, chunk, workdir)
    finally:
        engine_for.cache_clear()
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def _sqlite(rows: int, chunk: int, workdir: Path) -> dict[str, object]:
    try:
        return run_under_load(f"sqlite:///{workdir / 'source.db'}", rows, chunk, workdir)
    finally:
        engine_for.cache_clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    # Smaller than the default chunk (10000) on purpose: SQLite snapshots 200k rows
    # in 10000-row chunks in ~2 s, faster than the kill loop can land 3 kills mid-run.
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--source", choices=["postgresql", "sqlite", "both"], default="both")
    args = parser.parse_args()
    sources = ["postgresql", "sqlite"] if args.source == "both" else [args.source]
    failed = False
    for source in sources:
        run = _postgresql if source == "postgresql" else _sqlite
        with tempfile.TemporaryDirectory(prefix="snapload-") as tmp:
            try:
                result = {"ok": True, **run(args.rows, args.chunk_size, Path(tmp))}
            except AssertionError as exc:  # the checker's verdict, recorded as the result
                failed = True
                result = {"ok": False, "database": source, "rows": args.rows,
                          "error": str(exc)[:2000]}  # fmt: skip
        name = f"{dt.date.today()}-snapshot-load-{source}-{args.rows}.json"
        out = Path(__file__).parent / "results" / name
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
