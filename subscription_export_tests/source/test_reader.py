"""Reading the change log: exact batches in LSN order, awkward text intact, bounded prefetch."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import psycopg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from subscription_export.core.db import engine_for
from subscription_export.core.prefetch import prefetched
from subscription_export.core.values import to_utc
from subscription_export.source import reader
from subscription_export.source.demo_table import init_demo_source
from subscription_export.source.reader import iter_log_tables
from subscription_export.source.schema import clear_origin, set_origin
from subscription_export.source.sequencer import sequence
from subscription_export_tests.helpers import insert, update, writer


def test_batches_are_exact_and_text_survives_the_copy(source_url: str) -> None:
    engine = writer(source_url)
    init_demo_source(engine)
    awkward = 'Plan "Pro",\nline two\r\nand a tab\t, comma, ünïcödé'
    with engine.begin() as conn:
        for i in range(25):
            insert(conn, f"sub_{i:03d}", name=awkward if i % 5 == 0 else f"plan {i}")
    with engine.begin() as conn:
        update(conn, "sub_000", name="")
    sequence(engine, wait_s=10.0)

    tables = list(iter_log_tables(engine, 1, 26, batch_size=7))

    assert [t.num_rows for t in tables] == [7, 7, 7, 5]
    table = pa.concat_tables(tables)
    assert table.column("lsn").to_pylist() == list(range(1, 27))
    images = [json.loads(text) for text in table.column("image").to_pylist()]
    assert images[0]["name"] == awkward
    assert images[25]["name"] == ""  # an empty string stays a string, not NULL


def test_a_reader_error_reaches_the_consumer() -> None:
    def failing() -> Iterator[pa.Table]:
        yield pa.table({"x": [1]})
        raise RuntimeError("connection lost at LSN 42")

    stream = prefetched(failing(), depth=2, name="test")
    assert next(stream).num_rows == 1
    with pytest.raises(RuntimeError, match="LSN 42"):
        next(stream)


def test_a_consumer_that_stops_early_stops_the_reader() -> None:
    produced = 0
    closed = threading.Event()

    def endless() -> Iterator[pa.Table]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield pa.table({"x": [produced]})
        finally:
            closed.set()

    stream = prefetched(endless(), depth=2, name="test")
    assert next(stream).column("x").to_pylist() == [1]
    time.sleep(0.3)  # the reader fills the queue, then must wait instead of running ahead
    assert produced <= 4
    stream.close()
    assert closed.wait(5), "the source generator was not closed"


def test_origin_quote_bytes_and_sub_seconds_survive_the_copy(source_url: str) -> None:
    """The COPY's tab delimiter and \\x01 quote: a value holding them, a backslash or line
    ends still round-trips exactly; changed_at keeps its microseconds."""
    engine = writer(source_url)
    init_demo_source(engine)
    origin = 'ops\t"sync"\\n\x01\r\nend'
    name = 'a\x01b\\c\t"d"'
    with engine.begin() as conn:
        set_origin(conn, origin)
        insert(conn, "sub_1", name=name)
        clear_origin(conn)
    with engine.begin() as conn:
        insert(conn, "sub_2")
    sequence(engine, wait_s=10.0)
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT changed_at FROM subscription_change_log ORDER BY lsn")
        ).scalars()
        expected = [to_utc(v) for v in stored]

    table = pa.concat_tables(iter_log_tables(engine, 1, 2, batch_size=10))

    assert table.column("origin").to_pylist() == [origin, "app"]
    assert json.loads(table.column("image")[0].as_py())["name"] == name
    moments = table.column("changed_at").cast(pa.timestamp("us", "UTC")).to_pylist()
    assert moments == expected
    assert any(m.microsecond for m in moments)  # the clock's sub-seconds were kept


def test_changed_at_does_not_depend_on_the_session_time_zone_or_date_style(
    pg_url: str,
) -> None:
    """The reader sets TimeZone and DateStyle for its own transaction: a server or role
    configured otherwise reads the same instants."""
    engine = writer(pg_url)
    init_demo_source(engine)
    with engine.begin() as conn:
        insert(conn, "sub_1")
    sequence(engine, wait_s=10.0)
    with engine.connect() as conn:
        expected = to_utc(
            conn.execute(sa.text("SELECT changed_at FROM subscription_change_log")).scalar_one()
        )
    elsewhere = engine_for(
        pg_url.replace("options=", "options=-cTimeZone%3DAsia/Kolkata%20-cDateStyle%3DSQL,DMY%20")
    )

    [table] = iter_log_tables(elsewhere, 1, 1, batch_size=10)

    assert table.column("changed_at").cast(pa.timestamp("us", "UTC")).to_pylist() == [expected]


def test_a_server_error_during_the_copy_reaches_the_consumer(pg_url: str) -> None:
    rows = (
        "SELECT g, 'c', '{}', now(), 'app', 1 / (5 - g)"  # fails at the 5th row
        " FROM generate_series(1, 10) AS g"
    )
    with (
        psycopg.connect(pg_url.replace("?options=", "?_=").split("?")[0]) as conn,
        conn.cursor().copy(
            f"COPY ({rows}) TO STDOUT WITH (FORMAT csv, DELIMITER E'\\t', QUOTE E'\\x01')"
        ) as copy,
    ):
        batches = reader._batched_rows(copy, conn, batch_size=2)
        assert next(batches).num_rows == 2
        with pytest.raises(psycopg.errors.DivisionByZero):
            list(batches)
