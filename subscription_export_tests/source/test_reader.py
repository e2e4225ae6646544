"""Reading the change log: exact batches in LSN order, awkward text intact, bounded prefetch."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pyarrow as pa
import pytest

from subscription_export.source import reader
from subscription_export.source.demo_table import init_demo_source
from subscription_export.source.reader import iter_log_tables
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

    stream = reader._prefetched(failing(), depth=2)
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

    stream = reader._prefetched(endless(), depth=2)
    assert next(stream).column("x").to_pylist() == [1]
    time.sleep(0.3)  # the reader fills the queue, then must wait instead of running ahead
    assert produced <= 4
    stream.close()
    assert closed.wait(5), "the source generator was not closed"
