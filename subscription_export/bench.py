"""`subscription-export bench`: export throughput, memory and baselines on generated data.

The change log is filled directly with generated change rows (not through the capture
triggers), because the benchmark measures the export, not the application's writes. The
incremental cycle at the end does go through the triggers and Dagster.
"""

from __future__ import annotations

import datetime as dt
import importlib.abc
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from subscription_export.core.db import engine_for, is_postgres
from subscription_export.core.settings import Settings
from subscription_export.source.demo_table import init_demo_source

_PG_FILL = """
INSERT INTO subscription_change_log
    (lsn, op, subscription_id, before, after, changed_at, origin, schema_version, source_table)
SELECT g,
       CASE WHEN g % 50 = 0 THEN 'd' WHEN g <= :subs THEN 'c' ELSE 'u' END,
       'sub_' || lpad(((g - 1) % :subs)::text, 7, '0'),
       CASE WHEN g % 50 = 0 OR g > :subs THEN img ELSE NULL END,
       CASE WHEN g % 50 = 0 THEN NULL ELSE img END,
       ts, 'app', 1, 'subscriptions'
FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) AS g,
LATERAL (SELECT timestamptz '2026-01-01' + g * interval '1 second' AS ts) t,
LATERAL (SELECT jsonb_build_object(
    'id', 'sub_' || lpad(((g - 1) % :subs)::text, 7, '0'),
    'user_id', 'user_' || (g % 99991)::text,
    'name', 'Plan "' || (g % 7)::text || '", monthly',
    'category', (ARRAY['streaming','software','news','fitness'])[1 + g % 4],
    'amount', ((g % 49999) / 100.0)::numeric(18,4),  -- a JSON number, as to_jsonb(NEW) writes
    'currency', (ARRAY['USD','EUR','GBP','JPY'])[1 + g % 4],
    'billing_cycle', (ARRAY['monthly','yearly','weekly'])[1 + g % 3],
    'status', (ARRAY['active','paused','cancelled','past_due'])[1 + g % 4],
    'next_billing_date', (date '2026-01-01' + (g % 365))::text,
    'timezone', (ARRAY['UTC','America/New_York','Europe/Berlin'])[1 + g % 3],
    'created_at', to_jsonb(ts), 'updated_at', to_jsonb(ts), 'version', 1 + g / :subs
) AS img) i
"""

_SQLITE_FILL = """
WITH RECURSIVE seq(g) AS (SELECT :lo UNION ALL SELECT g + 1 FROM seq WHERE g < :hi),
rows AS (
    SELECT g, strftime('%Y-%m-%dT%H:%M:%fZ', '2026-01-01', '+' || g || ' seconds') AS ts,
           printf('sub_%07d', (g - 1) % :subs) AS sid FROM seq
),
imgs AS (
    SELECT g, ts, sid, json_object(
        'id', sid, 'user_id', 'user_' || (g % 99991),
        'name', 'Plan "' || (g % 7) || '", monthly',
        'category', CASE g % 4 WHEN 0 THEN 'streaming' WHEN 1 THEN 'software' WHEN 2 THEN 'news'
                    ELSE 'fitness' END,
        'amount', printf('%.4f', (g % 49999) / 100.0),
        'currency', CASE g % 4 WHEN 0 THEN 'USD' WHEN 1 THEN 'EUR' WHEN 2 THEN 'GBP' ELSE 'JPY' END,
        'billing_cycle', CASE g % 3 WHEN 0 THEN 'monthly' WHEN 1 THEN 'yearly' ELSE 'weekly' END,
        'status', CASE g % 4 WHEN 0 THEN 'active' WHEN 1 THEN 'paused' WHEN 2 THEN 'cancelled'
                  ELSE 'past_due' END,
        'next_billing_date', date('2026-01-01', '+' || (g % 365) || ' days'),
        'timezone', 'UTC', 'created_at', ts, 'updated_at', ts, 'version', 1 + g / :subs
    ) AS img FROM rows
)
INSERT INTO subscription_change_log
    (lsn, op, subscription_id, before, after, changed_at, origin, schema_version, source_table)
SELECT g, CASE WHEN g % 50 = 0 THEN 'd' WHEN g <= :subs THEN 'c' ELSE 'u' END, sid,
       CASE WHEN g % 50 = 0 OR g > :subs THEN img END, CASE WHEN g % 50 = 0 THEN NULL ELSE img END,
       ts, 'app', 1, 'subscriptions'
FROM imgs
"""


def fill_change_log(engine: sa.Engine, changes: int, subscriptions: int = 100_000) -> None:
    """Generate `changes` change-log rows with LSNs 1..changes, in chunks."""
    statement = sa.text(_PG_FILL if is_postgres(engine) else _SQLITE_FILL)
    chunk = 200_000
    for lo in range(1, changes + 1, chunk):
        hi = min(changes, lo + chunk - 1)
        with engine.begin() as conn:
            conn.execute(statement, {"lo": lo, "hi": hi, "subs": subscriptions})
    with engine.begin() as conn:
        # What autovacuum would do after a bulk load; without statistics the planner sorts the
        # whole table instead of walking the lsn index.
        conn.exec_driver_sql("ANALYZE subscription_change_log")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


@dataclass
class BenchTarget:
    source_url: str
    cleanup: Callable[[], None]


def prepare_source(source: str, workdir: Path, pg_dsn: str) -> BenchTarget:
    if source == "sqlite":
        path = workdir / f"bench_source_{uuid.uuid4().hex[:8]}.db"

        def remove() -> None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

        return BenchTarget(f"sqlite:///{path}", remove)
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    return BenchTarget(f"{pg_dsn}?options=-csearch_path%3D{schema}", drop)


def copy_baseline(engine: sa.Engine, hi: int) -> float:
    """Rows/s of the database alone: COPY of the ordered window into /dev/null (PostgreSQL),
    or a plain ordered fetch (SQLite)."""
    started = time.perf_counter()
    if is_postgres(engine):
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            query = (
                "COPY (SELECT lsn, op, before, after, changed_at, origin, schema_version"
                f" FROM subscription_change_log WHERE lsn BETWEEN 1 AND {hi} ORDER BY lsn)"
                " TO STDOUT"
            )
            with open(os.devnull, "wb") as sink, cur.copy(query) as copy:  # type: ignore[attr-defined]
                for block in copy:
                    sink.write(block)
        finally:
            raw.close()
    else:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(
                "SELECT lsn, op, before, after, changed_at, origin, schema_version"
                f" FROM subscription_change_log WHERE lsn BETWEEN 1 AND {hi} ORDER BY lsn"
            )
            for _part in result.partitions(50_000):
                pass
    return hi / (time.perf_counter() - started)


def pandas_baseline(engine: sa.Engine, hi: int, out: Path) -> float:
    """The naive way: the whole window into a DataFrame, then to Parquet."""
    try:
        import pandas as pd
    except ImportError:
        raise RuntimeError(
            "the pandas baseline needs pandas: pip install 'subscription-export[bench]',"
            " or pass --skip-pandas"
        ) from None

    started = time.perf_counter()
    frame = pd.read_sql(
        sa.text(
            "SELECT lsn, op, before, after, changed_at, origin, schema_version"
            " FROM subscription_change_log WHERE lsn BETWEEN 1 AND :hi ORDER BY lsn"
        ),
        engine,
        params={"hi": hi},
    )
    frame.to_parquet(out)
    return hi / (time.perf_counter() - started)


class _NoPandas(importlib.abc.MetaPathFinder):
    """Makes `import pandas` fail as if it were not installed."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def export_formats(settings: Settings, lo: int, hi: int) -> tuple[dict[str, Any], float]:
    """Export one window to the three formats; (figures per format, peak RSS in MB).

    Runs in a fresh process that cannot import pandas, as in a production install (pandas is
    only a `bench` extra): pyarrow would otherwise import it on first use, ~37 MB of RSS.
    """
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())
    from subscription_export.export.flow import export_window_file
    from subscription_export.runtime import Project
    from subscription_export.state.windows import Window

    project = Project(settings)
    formats: dict[str, Any] = {}
    for fmt in ("parquet", "csv", "jsonl"):
        (outcome, _), seconds = _timed(lambda f=fmt: export_window_file(project, f, Window(lo, hi)))
        formats[fmt] = {
            "rows_per_s": round(outcome.rows / seconds),
            "wall_s": round(seconds, 3),
            "bytes": outcome.bytes,
            "peak_rss_mb_after": round(peak_rss_mb(), 1),
        }
    return formats, peak_rss_mb()


BENCH_STAGES = ("fill", "export", "copy", "pandas", "incremental")


def run_bench(
    changes: int,
    source: str,
    workdir: Path,
    results_dir: Path,
    pg_dsn: str,
    skip_pandas: bool,
    on_stage: Callable[[str], None] = lambda _stage: None,
) -> dict[str, Any]:
    """Run the benchmark; `on_stage` is told each of `BENCH_STAGES` as it starts."""
    from subscription_export.export.cut import cut_windows
    from subscription_export.runtime import Project

    run_dir = workdir / f"run_{uuid.uuid4().hex[:8]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    target = prepare_source(source, run_dir, pg_dsn)
    try:
        engine = engine_for(target.source_url, writer=True)
        init_demo_source(engine)
        on_stage("fill")
        _, fill_s = _timed(lambda: fill_change_log(engine, changes))
        settings = Settings(
            source_url=target.source_url,
            state_url=f"sqlite:///{run_dir / 'state.db'}",
            export_dir=run_dir / "exports",
            window_max_changes=changes,
            window_max_age_s=0.0,
        )
        [window] = cut_windows(Project(settings)).new_windows
        # The exports run in a fresh process, so its peak RSS is the exporter's own (this
        # process has Dagster and the data generator loaded).
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            on_stage("export")
            formats, peak = pool.apply(export_formats, (settings, window.lo, window.hi))
        baselines = _baselines(engine, changes, run_dir, skip_pandas, on_stage)
        on_stage("incremental")
        incremental_runs = _incremental_cycles_s(engine, settings)
        report = {
            "changes": changes,
            "source": source,
            "date": dt.date.today().isoformat(),
            "fill_change_log_s": round(fill_s, 2),
            "formats": formats,
            "peak_rss_mb": round(peak, 1),
            "peak_rss_process": "fresh exporter process, pandas not importable (as installed)",
            "baselines": baselines,
            "parquet_vs_copy": round(
                formats["parquet"]["rows_per_s"] / baselines["copy_to_devnull"]["rows_per_s"], 3
            ),
            "incremental_10k_s": statistics.median(incremental_runs),
            "incremental_10k_runs_s": incremental_runs,
            "machine": _machine(),
        }
        return _written(report, results_dir / f"{report['date']}-{source}-{changes}.json")
    finally:
        engine_for.cache_clear()
        target.cleanup()
        shutil.rmtree(run_dir, ignore_errors=True)  # GBs of files at 3M changes


def _baselines(
    engine: sa.Engine,
    changes: int,
    run_dir: Path,
    skip_pandas: bool,
    on_stage: Callable[[str], None],
) -> dict[str, dict[str, int]]:
    """Rows/s of the database alone, and of the naive pandas way unless skipped."""
    on_stage("copy")
    baselines = {"copy_to_devnull": {"rows_per_s": round(copy_baseline(engine, changes))}}
    if not skip_pandas:
        on_stage("pandas")
        pandas_rate = pandas_baseline(engine, changes, run_dir / "pandas_naive.parquet")
        baselines["pandas_naive"] = {"rows_per_s": round(pandas_rate)}
    return baselines


INCREMENTAL_CYCLES = 5


def _incremental_cycles_s(engine: sa.Engine, settings: Settings) -> list[float]:
    """Seconds of each of `INCREMENTAL_CYCLES` in-process Dagster cycles, each over 10,000 new
    changes made through the triggers (after a first cycle that warms imports and definitions).
    One cycle is ~0.3 s, so a single figure is at the mercy of one scheduler hiccup."""
    import dagster as dg

    from subscription_export.defs.runner import run_cycle
    from subscription_export.sandbox.generator import generate

    generate(engine, subscriptions=100, changes=10_000, seed=3)
    instance = dg.DagsterInstance.ephemeral()
    run_cycle(settings, instance=instance)  # warm: imports and definitions
    runs: list[float] = []
    for seed in range(4, 4 + INCREMENTAL_CYCLES):
        generate(engine, subscriptions=100, changes=10_000, seed=seed)
        cycle, seconds = _timed(lambda: run_cycle(settings, instance=instance))
        assert all(r.success for r in cycle.runs), cycle.runs
        runs.append(round(float(seconds), 3))
    return runs


def _written(report: dict[str, Any], out: Path) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return {**report, "written_to": str(out)}


def _machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("pyarrow", "dagster", "sqlalchemy", "psycopg")}
