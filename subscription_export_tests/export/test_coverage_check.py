"""The canonical export's coverage check: a change the reader lost stops the export before
anything is recorded (the count comes from the window's planning scan, not a second one)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sqlalchemy.engine import Engine

from subscription_export.core.errors import ExportVerificationError
from subscription_export.core.settings import Settings
from subscription_export.export import window as window_module
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project
from subscription_export_tests.helpers import insert, writer


def test_a_change_the_reader_lost_fails_the_export(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with writer(settings.source_url).begin() as conn:
        for i in range(12):
            insert(conn, f"s{i}")
    project = Project(settings)
    [window] = cut_windows(project).new_windows
    read = window_module.iter_log_tables

    def losing_one(engine: Engine, lo: int, hi: int, *args: object) -> Iterator[pa.Table]:
        for table in read(engine, lo, hi, *args):  # type: ignore[arg-type]
            yield table.filter(pc.not_equal(table.column("lsn"), lo + 3))

    monkeypatch.setattr(window_module, "iter_log_tables", losing_one)

    with pytest.raises(ExportVerificationError, match="failed verification"):
        export_window_file(project, "parquet", window)
    assert project.watermarks.get("parquet") == 0
