"""One 1M-change export with whichever code is on PYTHONPATH, for A/B runs on a kept window.

    .venv/bin/python bench/export_ab_bench.py fill --schema ef_1m --changes 1000000 [--pg-dsn URL]
    PYTHONPATH=<tree> .venv/bin/python bench/export_ab_bench.py export --schema ef_1m \
        --changes 1000000 [--formats parquet,csv,jsonl] [--pg-dsn URL]

`fill` makes the window once (the bench's generator, then VACUUM ANALYZE, so no run pays for
hint bits). `export` prints one JSON line: per format wall seconds, rows/s, the exporter's CPU
(all its threads) and the CPU of the database's backends serving it (pooled, so they live
through the export; a parallel worker's share is missed), the file's sha256 and peak RSS; then
the bench's COPY baseline in the same process, with its CPU, and parquet/COPY. Alternate trees
(main, branch, main, ...) to compare on a shared machine; CPU seconds move less with the load
than wall seconds do.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

DSN = "postgresql://postgres@127.0.0.1:5432/test"


def url(dsn: str, schema: str) -> str:
    return f"{dsn}?options=-csearch_path%3D{schema}"


def fill(dsn: str, schema: str, changes: int) -> None:
    import psycopg

    from subscription_export.bench import fill_change_log
    from subscription_export.core.db import engine_for
    from subscription_export.source.demo_table import init_demo_source

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
    engine = engine_for(url(dsn, schema), writer=True)
    init_demo_source(engine)
    fill_change_log(engine, changes)
    with psycopg.connect(url(dsn, schema), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE subscription_change_log")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _backends_cpu(database: str) -> float:
    total = 0.0
    for proc in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{proc}/cmdline", "rb") as f:
                if database.encode() not in f.read():
                    continue
            with open(f"{proc}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return total


def export(dsn: str, schema: str, changes: int, formats: list[str]) -> dict[str, object]:
    from subscription_export.bench import _NoPandas, copy_baseline, peak_rss_mb

    sys.meta_path.insert(0, _NoPandas())
    from subscription_export.core.db import engine_for
    from subscription_export.core.settings import Settings
    from subscription_export.export.cut import cut_windows
    from subscription_export.export.flow import export_window_file
    from subscription_export.runtime import Project
    from subscription_export.state.windows import Window

    database = dsn.rsplit("/", 1)[1].split("?")[0]
    run = Path(tempfile.mkdtemp(prefix="export_ab_"))
    try:
        settings = Settings(
            source_url=url(dsn, schema),
            state_url=f"sqlite:///{run / 'state.db'}",
            export_dir=run / "exports",
            window_max_changes=changes,
            window_max_age_s=0.0,
        )
        project = Project(settings)
        [window] = cut_windows(project).new_windows
        out: dict[str, object] = {}
        for fmt in formats:
            cpu, backends = _process_cpu(), _backends_cpu(database)
            started = time.perf_counter()
            outcome, _ = export_window_file(project, fmt, Window(window.lo, window.hi))  # type: ignore[arg-type]
            wall = time.perf_counter() - started
            out[fmt] = {
                "wall_s": round(wall, 3),
                "rows_per_s": round(outcome.rows / wall),
                "client_cpu_s": round(_process_cpu() - cpu, 2),
                "backend_cpu_s": round(_backends_cpu(database) - backends, 2),
                "sha256": _sha256(Path(outcome.path)),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        engine = engine_for(url(dsn, schema))
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")  # its backend exists before the count starts
        cpu, backends = _process_cpu(), _backends_cpu(database)
        copy = copy_baseline(engine, changes)
        out["copy"] = {
            "rows_per_s": round(copy),
            "client_cpu_s": round(_process_cpu() - cpu, 2),
            "backend_cpu_s": round(_backends_cpu(database) - backends, 2),
        }
        if "parquet" in out:
            out["parquet_vs_copy"] = round(out["parquet"]["rows_per_s"] / copy, 3)  # type: ignore[index]
        out["load_average"] = os.getloadavg()[0]
        return out
    finally:
        shutil.rmtree(run, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fill", "export"])
    parser.add_argument("--schema", default="export_ab_1m")
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--formats", default="parquet")
    parser.add_argument("--pg-dsn", default=DSN)
    args = parser.parse_args()
    if args.command == "fill":
        fill(args.pg_dsn, args.schema, args.changes)
    else:
        print(json.dumps(export(args.pg_dsn, args.schema, args.changes, args.formats.split(","))))


if __name__ == "__main__":
    main()
