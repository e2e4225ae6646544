"""A window stream: batches in LSN order, a reader's error reaches the writer, and a writer that
stops early stops the reader at once (it was left to the garbage collector)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pyarrow as pa
import pytest

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
from subscription_export.export.flow import stream_window
from subscription_export.export.window import WindowStream
from subscription_export.runtime import Project
from subscription_export.source.sequencer import sequence
from subscription_export.state.windows import Window
from subscription_export_tests.helpers import insert


def _stream(settings: Settings, changes: int) -> WindowStream:
    engine = engine_for(settings.source_url, writer=True)
    with engine.begin() as conn:
        for i in range(changes):
            insert(conn, f"sub_{i:03d}", amount=f"{i}.50")
    sequence(engine, wait_s=10.0)
    return stream_window(Project(settings), Window(1, changes))


def test_batches_keep_lsn_order_and_counts(settings: Settings) -> None:
    stream = _stream(settings, 23)
    stream._tables = iter([t for t in stream._tables])
    tables = list(_rebatched(stream, 4))

    batches = list(stream.batches())

    assert [b.num_rows for b in batches] == [t.num_rows for t in tables]
    lsns = pa.Table.from_batches(batches).column("_lsn").to_pylist()
    assert lsns == list(range(1, 24))
    assert stream.rows_by_op == {"c": 23}


def _rebatched(stream: WindowStream, size: int) -> Iterator[pa.Table]:
    """Cut the window's log into `size`-row tables, put back as the stream's input."""
    whole = pa.concat_tables(list(stream._tables))
    parts = [whole.slice(i, size) for i in range(0, whole.num_rows, size)]
    stream._tables = iter(parts)
    return iter(parts)


def test_a_reader_error_reaches_the_writer(settings: Settings) -> None:
    stream = _stream(settings, 3)
    [log] = list(stream._tables)

    def failing() -> Iterator[pa.Table]:
        yield log
        raise RuntimeError("connection lost at LSN 42")

    stream._tables = failing()
    batches = stream.batches()
    assert next(batches).num_rows == 3
    with pytest.raises(RuntimeError, match="LSN 42"):
        next(batches)


def test_a_writer_that_stops_early_stops_the_reader(
    settings: Settings,
) -> None:
    stream = _stream(settings, 3)
    [log] = list(stream._tables)
    read = 0
    closed = threading.Event()

    def endless() -> Iterator[pa.Table]:
        nonlocal read
        try:
            while True:
                read += 1
                yield log
        finally:
            closed.set()

    stream._tables = endless()
    batches = stream.batches()
    assert next(batches).num_rows == 3
    batches.close()

    assert closed.wait(5), "the reader was not closed"
    assert read == 1
