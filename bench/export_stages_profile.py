"""CPU split of a Parquet export of a kept PostgreSQL window, stage by stage, in CPU seconds.

    PYTHONPATH=<tree> .venv/bin/python bench/export_stages_profile.py --schema ef_1m \
        --changes 1000000 [--pg-dsn URL]

(The window is made by `bench/export_ab_bench.py fill`.) Server: the backend's CPU (from
/proc) for the baseline COPY and variants of the export's COPY run server-side into
/dev/null. Client: `time.thread_time` of the thread doing each stage, run alone: the COPY read
loop and Arrow's CSV parse of this tree's reader, then the conversion's steps and the Parquet
writer on the first 200k rows, scaled to the window. CPU seconds hold on a shared machine far
better than wall seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from export_ab_bench import DSN, url

from subscription_export.formats.memory import configure_arrow_memory, prefer_jemalloc

prefer_jemalloc()
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.json as pajson  # noqa: E402

BATCH = 10_000
SAMPLE = 200_000
IMAGE = "CASE WHEN op = 'd' THEN before ELSE after END"
TO_CHAR = "to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
CSV_TAB = "WITH (FORMAT csv, DELIMITER E'\\t', QUOTE E'\\x01')"


def line(name: str, seconds: float) -> None:
    print(f"{name:66s} {seconds:6.3f} s")


def backend_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_side(engine: object, query: str, options: str = "") -> float:
    raw = engine.raw_connection()  # type: ignore[attr-defined]
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
        cursor.execute("SET TimeZone = 'UTC'")
        before = backend_cpu(pid)
        cursor.execute(f"COPY ({query}) TO '/dev/null' {options}")
        return backend_cpu(pid) - before
    finally:
        raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", default="export_ab_1m")
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--pg-dsn", default=DSN)
    args = parser.parse_args()
    configure_arrow_memory()
    from subscription_export.core.db import engine_for
    from subscription_export.core.settings import Settings
    from subscription_export.export import window as conversion
    from subscription_export.export.flow import stream_window
    from subscription_export.formats.writers import write_parquet
    from subscription_export.runtime import Project
    from subscription_export.source import reader
    from subscription_export.state.windows import Window

    n = args.changes
    engine = engine_for(url(args.pg_dsn, args.schema))
    where = f"FROM subscription_change_log WHERE lsn BETWEEN 1 AND {n} ORDER BY lsn"
    main_query = f"SELECT lsn, op, {IMAGE}::text, {TO_CHAR}, origin, schema_version {where}"
    raw_changed = f"SELECT lsn, op, {IMAGE}::text, changed_at, origin, schema_version {where}"
    print(f"rows: {n}; batch {BATCH}")
    print("-- server side alone (COPY ... TO '/dev/null' on the server: the backend's CPU)")
    baseline = f"SELECT lsn, op, before, after, changed_at, origin, schema_version {where}"
    line("baseline COPY (lsn, op, before, after, changed_at, ...)", server_side(engine, baseline))
    line(
        "export query, FORMAT csv, to_char (main)", server_side(engine, main_query, "(FORMAT csv)")
    )
    line("export query, FORMAT text, to_char", server_side(engine, main_query))
    line(
        "export query, FORMAT csv, changed_at raw", server_side(engine, raw_changed, "(FORMAT csv)")
    )
    line("export query, FORMAT text, changed_at raw", server_side(engine, raw_changed))
    line("export query, csv tab/\\x01, changed_at raw", server_side(engine, raw_changed, CSV_TAB))
    line(
        "no image (lsn, op, changed_at, origin, schema_version)",
        server_side(engine, f"SELECT lsn, op, changed_at, origin, schema_version {where}"),
    )

    print("-- client side, CPU of the thread doing it")
    parse, parsing = reader._parse_csv, [0.0]

    def timed_parse(data: bytearray) -> pa.Table:
        started = time.thread_time()
        table = parse(data)
        parsing[0] += time.thread_time() - started
        return table

    reader._parse_csv = timed_parse  # type: ignore[assignment]
    started = time.thread_time()
    for _ in reader._copy_tables(engine, 1, n, BATCH, None):
        pass
    reader._parse_csv = parse  # type: ignore[assignment]
    line("COPY read loop of this tree (GIL held)", time.thread_time() - started - parsing[0])
    line("Arrow CSV parse of this tree, 10k-row batches", parsing[0])

    run = Path(tempfile.mkdtemp(prefix="export_stages_"))
    try:
        settings = Settings(
            source_url=url(args.pg_dsn, args.schema),
            state_url=f"sqlite:///{run / 'state.db'}",
            export_dir=run / "exports",
            window_max_changes=n,
            window_max_age_s=0.0,
        )
        stream = stream_window(Project(settings), Window(1, n))
        logs: list[pa.Table] = []
        for table in stream._tables:
            logs.append(table)
            if len(logs) * BATCH >= SAMPLE:
                break
        stream._tables.close()  # type: ignore[attr-defined]
        scale = n / SAMPLE
        mapping = stream.plan.by_version[1]
        spent: dict[str, float] = {}

        def tick(name: str, since: float) -> None:
            spent[name] = spent.get(name, 0.0) + time.thread_time() - since

        for log in logs:
            since = time.thread_time()
            images = log.column("image").combine_chunks()
            ndjson = conversion._lines(images)
            tick("_lines (NDJSON buffer)", since)
            types = conversion._json_read_types(mapping.sources, stream.columns, stream.schema)
            since = time.thread_time()
            parsed = pajson.read_json(
                pa.BufferReader(ndjson),
                read_options=pajson.ReadOptions(block_size=8 << 20, use_threads=False),
                parse_options=pajson.ParseOptions(
                    explicit_schema=conversion._with_captured(
                        pa.schema(list(types.items())), mapping.captured
                    ),
                    unexpected_field_behavior="error",
                ),
            )
            tick("Arrow JSON parse of the images", since)
            since = time.thread_time()
            ops = log.column("op").combine_chunks()
            meta = [
                log.column("lsn").combine_chunks(),
                ops,
                log.column("changed_at").combine_chunks().cast(conversion.UTC_TIMESTAMP),
                log.column("origin").combine_chunks(),
                pc.equal(ops, "d"),
                log.column("schema_version").combine_chunks(),
            ]
            tick("meta columns (changed_at cast)", since)
            since = time.thread_time()
            fields = list(stream.schema)[len(meta) :]
            values = [
                pa.nulls(log.num_rows, f.type)
                if src is None
                else conversion._cast_column(parsed.column(src).combine_chunks(), f.type)
                for src, f in zip(mapping.sources, fields, strict=True)
            ]
            tick("casts of image fields", since)
            since = time.thread_time()
            conversion._clean_text(stream.schema, values, len(meta))
            tick("_clean_text (NUL, domains)", since)
            since = time.thread_time()
            conversion._zero_maybe_misread(images, values)
            tick("_zero_maybe_misread", since)
        for name, seconds in spent.items():
            line(f"  {name} (x{scale:.0f})", seconds * scale)
        since = time.thread_time()
        batches = [stream._convert_fast(log) for log in logs]
        line(f"_convert_fast total (x{scale:.0f})", (time.thread_time() - since) * scale)
        since = time.thread_time()
        with open(run / "sample.parquet", "wb") as sink:
            write_parquet([b for b in batches if b is not None], stream.schema, sink)
        line(
            f"write_parquet (zstd 3, dictionary) (x{scale:.0f})",
            (time.thread_time() - since) * scale,
        )
    finally:
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
