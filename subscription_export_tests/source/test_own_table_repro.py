"""Issue 13, first bullet: a user's own `subscriptions` table with an integer key.

Before: `init` accepted it, every change was quarantined ("expected text, got int 1") and
`run --once` still said "1 exported, 0 failed" (silent total loss)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa

from subscription_export.core.settings import Settings, replace
from subscription_export_tests.cli_run import run_cli as _run
from subscription_export_tests.helpers import insert, read_exported, update, writer

_PG_KEY = "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
_SQLITE_KEY = "id INTEGER PRIMARY KEY"
_REST = """user_id text NOT NULL, name text NOT NULL, category text, amount numeric(18, 4) NOT NULL,
 currency text NOT NULL, billing_cycle text NOT NULL, status text NOT NULL,
 next_billing_date date, timezone text, created_at timestamptz NOT NULL,
 updated_at timestamptz NOT NULL, version integer NOT NULL DEFAULT 1"""
_INSERT = """INSERT INTO subscriptions (user_id, name, category, amount, currency, billing_cycle,
 status, next_billing_date, timezone, created_at, updated_at, version) VALUES ('u1', 'Plan',
 'software', '9.99', 'EUR', 'monthly', 'active', '2027-01-31', 'Europe/Berlin',
 '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 1)"""


def test_integer_key_table_is_exported_not_quarantined(source_url: str, tmp_path: Path) -> None:
    engine = writer(source_url)
    key = _PG_KEY if engine.dialect.name == "postgresql" else _SQLITE_KEY
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE subscriptions ({key}, {_REST})")
    settings = Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
    )
    _run(["init"], settings, tmp_path)
    with engine.begin() as conn:
        conn.exec_driver_sql(_INSERT)
    result = _run(["run", "--once", "--json"], settings, tmp_path, check=False)
    exported = read_exported(tmp_path / "exports" / "subscription_changes")
    assert exported.column("id").to_pylist() == [1], result.stdout
    assert exported.schema.field("id").type == pa.int64()
    assert result.returncode == 0 and json.loads(result.stdout)["quarantined"] == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id FROM subscriptions")).scalar_one() == 1


def test_a_window_quarantined_whole_needs_operator_action(
    settings: Settings, tmp_path: Path
) -> None:
    """Every change quarantined: `run` exits 3 naming `quarantine list`; `status` counts them."""
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "s1")
    _run(["run", "--once"], settings, tmp_path)
    with engine.begin() as conn:
        update(conn, "s1", currency="XXQ")
    result = _run(["run", "--once"], settings, tmp_path, check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "quarantine list" in result.stderr
    with engine.begin() as conn:
        update(conn, "s1", currency="EUR")
        insert(conn, "s2")
    partial = _run(["run", "--once", "--json"], settings, tmp_path)  # some got through: exit 0
    assert json.loads(partial.stdout)["quarantined"] == 0
    status = json.loads(_run(["status", "--json"], settings, tmp_path).stdout)
    assert status["open_quarantine"] == 1


def test_init_names_the_key_and_refuses_a_table_without_one(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = writer(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE ledger (entry TEXT, amount INTEGER)")
        conn.exec_driver_sql("CREATE TABLE keyed (a TEXT, b INTEGER, PRIMARY KEY (a, b))")
    settings = Settings(
        source_url=sqlite_url, state_url=f"sqlite:///{tmp_path / 's.db'}", table="ledger"
    )
    refused = _run(["init"], settings, tmp_path, check=False)
    assert refused.returncode == 2 and "has no primary key" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    done = _run(["init"], replace(settings, table="keyed"), tmp_path)
    assert "table keyed: key (a, b); columns a text, b integer" in done.stdout
