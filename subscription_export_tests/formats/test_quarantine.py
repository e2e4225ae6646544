"""Invariant 8: a row that cannot be exported is quarantined with LSN and reason, never lost."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings, replace
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project
from subscription_export.state.quarantine import list_quarantine
from subscription_export_tests.helpers import insert, update, writer

BAD = [
    ("currency", "XXQ", "not an ISO 4217 currency"),
    ("amount", "NaN", "not finite"),
    ("amount", "12.34567", "more than 4 decimal places"),
    ("amount", "ten", "non-numeric"),
    ("next_billing_date", "2026-02-30", "unparseable date"),
    ("updated_at", "yesterday", "unparseable timestamp"),
]


def test_bad_currency_is_quarantined(settings: Settings) -> None:
    _check_quarantined(settings, *BAD[0])


@pytest.mark.parametrize(("field", "value", "reason"), BAD[1:])
def test_bad_values_are_quarantined_with_lsn_field_and_reason(
    sqlite_url: str,
    tmp_path,
    field: str,
    value: str,
    reason: str,  # type: ignore[no-untyped-def]
) -> None:
    """SQLite only: PostgreSQL's typed columns already refuse these at write time."""
    from subscription_export.source.demo_table import init_demo_source

    init_demo_source(writer(sqlite_url))
    settings = Settings(
        source_url=sqlite_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "out",
        window_max_age_s=0.0,
    )
    _check_quarantined(settings, field, value, reason)


def _check_quarantined(settings: Settings, field: str, value: str, reason: str) -> None:
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "good")
        insert(conn, "bad")
    with engine.begin() as conn:
        update(conn, "bad", **{field: value})
        update(conn, "good", status="paused")
    project = Project(replace(settings, read_batch_size=2))
    window = cut_windows(project).new_windows[0]
    outcome, watermark = export_window_file(project, "parquet", window)
    assert outcome.rows == 3 and watermark == 4  # the bad row is accounted for, not a gap
    [held] = outcome.quarantined
    assert (held.lsn, held.field) == (3, field) and reason in held.reason
    assert json.loads(held.raw)["id"] == "bad"
    stored = list_quarantine(project.state)
    assert [(r["lsn"], r["field"]) for r in stored] == [(3, field)]
    lines = (settings.export_dir / "_quarantine" / f"{window.key}.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["lsn"] == 3
    again, _ = export_window_file(project, "parquet", window)  # re-export: same, not doubled
    assert len(list_quarantine(project.state)) == 1 and again.sha256 == outcome.sha256


def test_unknown_column_value_on_postgres_is_quarantined(pg_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from subscription_export.source.demo_table import init_demo_source

    engine = writer(pg_url)
    init_demo_source(engine)
    with engine.begin() as conn:
        insert(conn, "a")
        conn.execute(sa.text("ALTER TABLE subscriptions ADD COLUMN seats integer"))
        update(conn, "a", seats=5)  # before `init` re-registers the capture schema
    settings = Settings(
        source_url=pg_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "out",
        window_max_age_s=0.0,
    )
    project = Project(settings)
    window = cut_windows(project).new_windows[0]
    outcome, _ = export_window_file(project, "parquet", window)
    assert outcome.rows == 1
    assert [q.field for q in outcome.quarantined] == ["seats"]
    assert "run `subscription-export init`" in outcome.quarantined[0].reason
