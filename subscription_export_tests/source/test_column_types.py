"""Issue 13 item 1: the column types real schemas use, read from the catalog, exported with
their own Arrow types (Parquet) and text forms (CSV, JSON Lines)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project
from subscription_export.source.schema import init_source
from subscription_export.state.quarantine import list_quarantine
from subscription_export_tests.helpers import writer

_PG_TABLE = """CREATE TABLE typed (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint, n numeric(10, 3), nn numeric, r real,
    d double precision, b boolean, t text, vc varchar(20), ch char(3), e mood, dt date,
    ts timestamp, tstz timestamptz, tm time, u uuid, j json, jb jsonb, ia integer[],
    ta text[], na numeric(6, 2)[], by bytea, g integer GENERATED ALWAYS AS (i4 * 2) STORED,
    iv interval
)"""
_PG_ROW = """INSERT INTO typed (i2, i4, i8, n, nn, r, d, b, t, vc, ch, e, dt, ts, tstz, tm, u, j,
    jb, ia, ta, na, by, iv) VALUES (-2, 4, 9007199254740993, 1234567.125, 3.14159265358979,
    1.5, 0.1, true, 'tèxt', 'vc', 'ab', 'sad', '2026-02-28', '2026-01-02 03:04:05.5',
    '2026-01-02 03:04:05+02', '12:34:56.789', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
    '{"b": 1, "a": [1.50, "x"]}', '"just a string"', '{1,2,NULL}', '{"x","y,z"}',
    '{1.25,NULL}', '\\x0102ff', '1 day')"""

_PG_TYPES = {
    "id": pa.int64(),
    "i2": pa.int64(),
    "i4": pa.int64(),
    "i8": pa.int64(),
    "n": pa.decimal128(10, 3),
    "nn": pa.string(),
    "r": pa.float64(),
    "d": pa.float64(),
    "b": pa.bool_(),
    "t": pa.string(),
    "vc": pa.string(),
    "ch": pa.string(),
    "e": pa.string(),
    "dt": pa.date32(),
    "ts": pa.timestamp("us", tz="UTC"),
    "tstz": pa.timestamp("us", tz="UTC"),
    "tm": pa.time64("us"),
    "u": pa.string(),
    "j": pa.string(),
    "jb": pa.string(),
    "ia": pa.list_(pa.int64()),
    "ta": pa.list_(pa.string()),
    "na": pa.list_(pa.decimal128(6, 2)),
    "by": pa.binary(),
    "g": pa.int64(),
    "iv": pa.string(),
}
_UTC = dt.UTC
_PG_VALUES = {
    "id": 1,
    "i2": -2,
    "i4": 4,
    "i8": 9007199254740993,
    "n": Decimal("1234567.125"),
    "nn": "3.14159265358979",
    "r": 1.5,
    "d": 0.1,
    "b": True,
    "t": "tèxt",
    "vc": "vc",
    "ch": "ab ",
    "e": "sad",
    "dt": dt.date(2026, 2, 28),
    "ts": dt.datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=_UTC),
    "tstz": dt.datetime(2026, 1, 2, 1, 4, 5, tzinfo=_UTC),
    "tm": dt.time(12, 34, 56, 789000),
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "j": '{"a":[1.50,"x"],"b":1}',
    "jb": '"just a string"',
    "ia": [1, 2, None],
    "ta": ["x", "y,z"],
    "na": [Decimal("1.25"), None],
    "by": b"\x01\x02\xff",
    "g": 8,
    "iv": "1 day",
}


def _export(url: str, tmp_path: Path, table: str) -> dict[str, Path]:
    settings = Settings(
        source_url=url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
        table=table,
    )
    project = Project(settings)
    [window] = cut_windows(project).new_windows
    paths = {
        fmt: export_window_file(project, fmt, window)[0].path for fmt in ("parquet", "csv", "jsonl")
    }  # type: ignore[arg-type]
    assert list_quarantine(project.state) == []
    return paths


@pytest.mark.integration
def test_every_listed_postgres_type_is_exported_with_its_type(pg_url: str, tmp_path: Path) -> None:
    engine = writer(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TYPE mood AS ENUM ('ok', 'sad')")
        conn.exec_driver_sql(_PG_TABLE)
    schema = init_source(engine, "typed")
    assert {w.split("'")[1] for w in schema.warnings} == {"nn", "iv"}  # exported as text
    with engine.begin() as conn:
        conn.exec_driver_sql(_PG_ROW)
    paths = _export(pg_url, tmp_path, "typed")
    table = pq.read_table(paths["parquet"])
    assert {f.name: f.type for f in table.schema if not f.name.startswith("_")} == _PG_TYPES
    [row] = table.to_pylist()
    assert {k: v for k, v in row.items() if not k.startswith("_")} == _PG_VALUES
    [line] = paths["jsonl"].read_text().splitlines()
    record = json.loads(line)
    assert record["by"] == "AQL/" and record["tm"] == "12:34:56.789000"
    assert record["ia"] == [1, 2, None] and record["na"] == ["1.25", None]
    assert record["j"] == '{"a":[1.50,"x"],"b":1}' and record["n"] == "1234567.125"
    csv = paths["csv"].read_text()
    assert ',"AQL/",' in csv and '"[""x"",""y,z""]"' in csv


def test_sqlite_declared_types_generated_columns_and_blobs(sqlite_url: str, tmp_path: Path) -> None:
    engine = writer(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE things (id INTEGER PRIMARY KEY, u UUID, j JSON, tm TEXT TIME,"
            " blob BLOB, price TEXT DECIMAL(8, 2), doubled INTEGER GENERATED ALWAYS AS (id * 2))"
        )
    init_source(engine, "things")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO things (id, u, j, tm, blob, price) VALUES (7,"
            " 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{\"b\": 1, \"a\": 2}', '08:00:01',"
            " X'00ff', '12.50')"
        )
    paths = _export(sqlite_url, tmp_path, "things")
    [row] = pq.read_table(paths["parquet"]).to_pylist()
    assert {k: v for k, v in row.items() if not k.startswith("_")} == {
        "id": 7,
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "j": '{"a":2,"b":1}',
        "tm": dt.time(8, 0, 1),
        "blob": b"\x00\xff",
        "price": Decimal("12.50"),
        "doubled": 14,
    }
