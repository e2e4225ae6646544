"""Captured changes take the vectorized path on both databases, and both paths agree.

PostgreSQL's `to_jsonb` writes numeric as a JSON number and SQLite's trigger writes text; a
batch the fast path refuses falls back to the row-by-row path (correct, ~10x slower), so a
refusal of ordinary captured data would be a silent performance bug.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from subscription_export.core.settings import Settings
from subscription_export.export.flow import stream_window
from subscription_export.export.window import WindowStream
from subscription_export.runtime import Project
from subscription_export.sandbox.generator import generate
from subscription_export.source.demo_table import init_demo_source
from subscription_export.source.reader import log_rows
from subscription_export.source.sequencer import sequence
from subscription_export.state.windows import Window
from subscription_export_tests.helpers import writer


def test_captured_changes_convert_on_the_fast_path_exactly_as_row_by_row(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = writer(settings.source_url)
    init_demo_source(engine)
    generate(engine, subscriptions=40, changes=300, seed=11)
    sequence(engine, wait_s=10.0)
    project = Project(settings)

    def refuse(self: WindowStream, rows: object) -> pa.RecordBatch:
        raise AssertionError("a batch of captured changes fell back to the row path")

    monkeypatch.setattr(WindowStream, "_convert_slow", refuse)
    fast = pa.Table.from_batches(list(stream_window(project, Window(1, 300)).batches()))
    monkeypatch.undo()

    stream = stream_window(project, Window(1, 300))
    slow = pa.Table.from_batches(
        [stream._convert_slow(log_rows(table)) for table in stream._tables]
    )
    assert fast.num_rows == 300
    assert fast.equals(slow)
