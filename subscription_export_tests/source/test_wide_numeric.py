"""A PostgreSQL numeric(p, s) wider than Parquet's decimal128 (38 digits) has no exact export
type: it was registered as decimal(50,5) and every window of the table failed for good
("precision should be between 1 and 38"). It is exported as its text, with a warning at
`init`, as numeric without (p, s) is."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project
from subscription_export.source.schema import init_source
from subscription_export.state.quarantine import list_quarantine
from subscription_export_tests.helpers import writer

WIDE = "123456789012345678901234567890123456789012345.12345"


@pytest.mark.integration
def test_a_numeric_wider_than_38_digits_is_exported_as_its_text(
    pg_url: str, tmp_path: Path
) -> None:
    engine = writer(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE ledger (id integer PRIMARY KEY, total numeric(50,5))")
    schema = init_source(engine, "ledger")
    assert any("total" in w and "38" in w for w in schema.warnings), schema.warnings
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO ledger VALUES (1, {WIDE})")
    project = Project(
        Settings(
            source_url=pg_url,
            state_url=f"sqlite:///{tmp_path / 'state.db'}",
            export_dir=tmp_path / "exports",
            window_max_age_s=0.0,
            table="ledger",
        )
    )
    [window] = cut_windows(project).new_windows
    outcome, _ = export_window_file(project, "parquet", window)
    assert list_quarantine(project.state) == []
    assert [r["total"] for r in pq.read_table(outcome.path).to_pylist()] == [WIDE]
