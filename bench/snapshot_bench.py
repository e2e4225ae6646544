"""Snapshot throughput on PostgreSQL: rows/s of the online snapshot of an N-row `subscriptions`
table against the same run's `COPY subscriptions TO STDOUT` (the fastest anything can read the
table) and the same run's bare `INSERT INTO <log copy> SELECT … FROM subscriptions` (the floor of
any design that writes a change-log row per table row), plus this process's peak RSS. Two
ceilings of any design at all: the server building the triggers' images alone (`to_jsonb`,
nothing written) and the cheapest durable copy of the rows (`COPY TO` streamed into `COPY FROM`
of an index-less table). Not part of the test suite.

    python bench/snapshot_bench.py --rows 1000000 [--chunk-size 2048] [--pg-url URL]

Writes bench/results/{date}-snapshot-{rows}-chunk{size}.json. The table lives in a throw-away
schema.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import time
import uuid
from pathlib import Path

import psycopg
import sqlalchemy as sa

from subscription_export.core.db import engine_for
from subscription_export.source.demo_table import demo_table_ddl
from subscription_export.source.schema import init_source
from subscription_export.source.sequencer import sequence
from subscription_export.source.snapshot import DEFAULT_CHUNK, run_snapshot

_FILL = """
INSERT INTO subscriptions (id, user_id, name, category, amount, currency, billing_cycle, status,
    next_billing_date, timezone, created_at, updated_at, version)
SELECT 'sub_' || lpad(g::text, 8, '0'), 'user_' || (g % 99991), 'Plan ' || (g % 7),
       (ARRAY['streaming','software','news','fitness'])[1 + g % 4], (g % 49999) / 100.0,
       (ARRAY['USD','EUR','GBP','JPY'])[1 + g % 4], 'monthly',
       (ARRAY['active','paused','cancelled','past_due'])[1 + g % 4],
       date '2026-01-01' + (g % 365), 'UTC', now(), now(), 1
FROM generate_series(1, :rows) AS g
"""


def _copy_seconds(dsn: str, schema: str) -> tuple[float, int]:
    with psycopg.connect(dsn, options=f"-csearch_path={schema}") as conn:
        started, size = time.perf_counter(), 0
        with conn.cursor().copy("COPY subscriptions TO STDOUT") as copy:
            for block in copy:
                size += len(block)
        return time.perf_counter() - started, size


_FLOOR = """
INSERT INTO floor_log (lsn, op, subscription_id, before, after, origin, schema_version,
    source_table)
SELECT row_number() OVER (ORDER BY s.id), 'r', s.id, NULL, to_jsonb(s), 'app', 1,
    'subscriptions'
FROM subscriptions AS s ORDER BY s.id
"""


def _floor_seconds(engine: sa.Engine) -> float:
    """The design's floor: ONE bare `INSERT INTO log SELECT … FROM table` (same image, same
    indexes as the change log, LSNs set) - what any snapshot writing a change-log row per
    table row costs at least, without chunks, progress or concurrency."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE floor_log (LIKE subscription_change_log INCLUDING ALL)")
    try:
        with engine.begin() as conn:
            started = time.perf_counter()
            conn.exec_driver_sql(_FLOOR)
        return time.perf_counter() - started
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE floor_log")


_IMAGES_ONLY = "SELECT sum(length(to_jsonb(s)::text)) FROM subscriptions AS s"


def _images_only_seconds(dsn: str, schema: str) -> float:
    """The server building every row's image as the triggers do (`to_jsonb`), writing nothing:
    a ceiling for any snapshot that stores the trigger's image."""
    with psycopg.connect(dsn, options=f"-csearch_path={schema}") as conn:
        started = time.perf_counter()
        conn.execute(_IMAGES_ONLY).fetchone()
        return time.perf_counter() - started


def _copy_roundtrip_seconds(dsn: str, schema: str) -> float:
    """`COPY subscriptions TO STDOUT` streamed into `COPY … FROM STDIN` of an index-less copy of
    the table, committed: the cheapest durable copy of the rows there is (no image, no index, no
    LSN) - a ceiling for any snapshot that stores the rows at all."""
    options = f"-csearch_path={schema}"
    with (
        psycopg.connect(dsn, options=options) as source,
        psycopg.connect(dsn, options=options) as sink,
    ):
        sink.execute("CREATE TABLE roundtrip (LIKE subscriptions)")
        sink.commit()
        started = time.perf_counter()
        with (
            source.cursor().copy("COPY subscriptions TO STDOUT") as out,
            sink.cursor().copy("COPY roundtrip FROM STDIN") as into,
        ):
            for block in out:
                into.write(block)
        sink.commit()
        seconds = time.perf_counter() - started
        sink.execute("DROP TABLE roundtrip")
        sink.commit()
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    schema = f"snapbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        engine = engine_for(f"{args.pg_url}?options=-csearch_path%3D{schema}", writer=True)
        with engine.begin() as conn:
            conn.exec_driver_sql(demo_table_ddl(True))
            conn.execute(sa.text(_FILL), {"rows": int(args.rows)})
            conn.exec_driver_sql("ANALYZE subscriptions")
        init_source(engine)
        copy_s, copy_bytes = _copy_seconds(args.pg_url, schema)
        started = time.perf_counter()
        done = run_snapshot(engine, chunk_size=args.chunk_size)
        snapshot_s = time.perf_counter() - started
        started = time.perf_counter()
        sequence(engine)
        sequence_s = time.perf_counter() - started
        with engine.connect() as conn:
            emitted = conn.execute(
                sa.text("SELECT COUNT(*) FROM subscription_change_log WHERE op = 'r'")
            ).scalar_one()
        assert emitted == done.rows_done == args.rows, (emitted, done)
        floor_s = _floor_seconds(engine)
        images_s = _images_only_seconds(args.pg_url, schema)
        roundtrip_s = _copy_roundtrip_seconds(args.pg_url, schema)
        result = {
            "rows": args.rows,
            "chunk_size": args.chunk_size,
            "chunks": done.chunks_done,
            "copy_s": round(copy_s, 3),
            "copy_rows_per_s": round(args.rows / copy_s),
            "copy_bytes": copy_bytes,
            "snapshot_s": round(snapshot_s, 3),
            "snapshot_rows_per_s": round(args.rows / snapshot_s),
            "snapshot_vs_copy": round(copy_s / snapshot_s, 3),
            "sequence_s": round(sequence_s, 3),
            "bare_insert_select_s": round(floor_s, 3),
            "bare_insert_vs_copy": round(copy_s / floor_s, 3),
            "snapshot_vs_bare_insert": round(floor_s / snapshot_s, 3),
            # Ceilings of any design, whatever it stores: building the images alone, and the
            # cheapest durable copy of the rows (COPY out -> COPY in, no index, no image).
            "images_only_s": round(images_s, 3),
            "images_only_vs_copy": round(copy_s / images_s, 3),
            "copy_roundtrip_s": round(roundtrip_s, 3),
            "copy_roundtrip_vs_copy": round(copy_s / roundtrip_s, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    finally:
        engine_for.cache_clear()
        with psycopg.connect(args.pg_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    name = f"{dt.date.today()}-snapshot-{args.rows}-chunk{args.chunk_size}.json"
    out = Path(__file__).parent / "results" / name
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
