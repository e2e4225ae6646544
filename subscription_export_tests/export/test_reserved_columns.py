"""A deployment whose table was registered before `init` refused columns named like the
export's metadata columns (`_deleted`, `_op`, ...): its windows exported files with two
columns of one name and reported success. The export must fail instead, with init's one-line
reason, and write no file. Real SQLite and PostgreSQL sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project
from subscription_export.source import catalog
from subscription_export.source.catalog import ReservedColumnError
from subscription_export.source.schema import init_source
from subscription_export.state.windows import list_windows
from subscription_export_tests.helpers import writer


def _registered_by_an_older_release(source_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`accounts` with a soft-delete flag `_deleted`, registered as `init` did before it
    refused such a column."""
    engine = writer(source_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE accounts (id integer PRIMARY KEY, _deleted boolean, name text)"
        )
    with monkeypatch.context() as older:
        older.setattr(catalog, "METADATA_COLUMNS", ())
        init_source(engine, "accounts")
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO accounts (id, _deleted, name) VALUES (1, false, 'a')")


def test_a_window_of_a_table_with_a_metadata_named_column_fails_to_export(
    source_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parquet: the window's first file (CSV and JSON Lines are written from it)."""
    _registered_by_an_older_release(source_url, monkeypatch)
    project = Project(
        Settings(
            source_url=source_url,
            state_url=f"sqlite:///{tmp_path / 'state.db'}",
            export_dir=tmp_path / "exports",
            tables="accounts",
            window_max_age_s=0.0,
        )
    )
    cut_windows(project)
    (window,) = list_windows(project.state)
    with pytest.raises(ReservedColumnError, match=r"'_deleted'.*RENAME COLUMN.*`init`") as failed:
        export_window_file(project, "parquet", window, holder="reserved-test")
    assert "\n" not in str(failed.value) and failed.value.exit_code == 2
    assert not [p for p in (tmp_path / "exports").rglob("*") if p.is_file()]


def test_after_the_rename_and_init_the_next_window_exports(
    source_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the message says to do is enough: the windows written after the rename and `init`
    export (the refused window, whose changes carry `_deleted`, stays refused)."""
    _registered_by_an_older_release(source_url, monkeypatch)
    settings = Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        tables="accounts",
        window_max_age_s=0.0,
    )
    project = Project(settings)
    cut_windows(project)
    engine = writer(source_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE accounts RENAME COLUMN _deleted TO is_deleted")
    init_source(engine, "accounts")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE accounts SET name = 'b' WHERE id = 1")
    cut_windows(project)
    _first, second = list_windows(project.state)
    outcome, _rows = export_window_file(project, "parquet", second, holder="reserved-test")
    assert outcome is not None
