"""The CLI with several captured tables (SUBSCRIPTION_EXPORT_TABLES): init snapshots a table
that already holds rows, `run --once` exports both tables' assets through Dagster, `verify`,
`status`, `export --table` and `snapshot --table` know every table."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.source.demo_table import create_demo_table
from subscription_export_tests.cli_run import run_cli as _run
from subscription_export_tests.helpers import insert, writer

PLANS_DDL = "CREATE TABLE plans (code TEXT PRIMARY KEY, title TEXT NOT NULL, seats INTEGER)"


def _settings(source_url: str, tmp_path: Path) -> Settings:
    return Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
        tables="subscriptions,plans",
    )


def _source(source_url: str) -> sa.Engine:
    engine = writer(source_url)
    create_demo_table(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(PLANS_DDL)
        for n in range(3):  # rows from before capture: init snapshots them
            conn.exec_driver_sql(f"INSERT INTO plans VALUES ('old{n}', 'Old {n}', {n})")
    return engine


def test_init_run_verify_status_with_two_tables(source_url: str, tmp_path: Path) -> None:
    settings = _settings(source_url, tmp_path)
    engine = _source(source_url)
    init = _run(["init"], settings, tmp_path)
    assert "table plans: key (code)" in init.stdout
    assert "snapshot of plans: 3 rows" in init.stdout
    with engine.begin() as conn:
        insert(conn, "s1")
        conn.exec_driver_sql("UPDATE plans SET seats = 9 WHERE code = 'old1'")
        insert(conn, "s2")
    run = json.loads(_run(["run", "--once", "--json"], settings, tmp_path).stdout)
    assert [r["success"] for r in run["runs"]] == [True]
    [key] = run["new_windows"]
    plans = pq.read_table(settings.export_dir / "plans_changes" / f"{key}.parquet")
    subs = pq.read_table(settings.export_dir / "subscription_changes" / f"{key}.parquet")
    assert plans.column("_op").to_pylist() == ["r", "r", "r", "u"]
    assert plans.column_names[-3:] == ["code", "title", "seats"]
    assert subs.column("id").to_pylist() == ["s1", "s2"]
    assert sorted(plans.column("_lsn").to_pylist() + subs.column("_lsn").to_pylist()) == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    verify = _run(["verify"], settings, tmp_path)
    assert "6/6 file(s) match their manifests" in verify.stdout
    status = json.loads(_run(["status", "--json"], settings, tmp_path).stdout)
    marks = {k: v["watermark"] for k, v in status["consumers"].items()}
    assert marks == dict.fromkeys(
        ["parquet", "csv", "jsonl", "plans.parquet", "plans.csv", "plans.jsonl"], 6
    )
    assert status["tables"]["plans"]["snapshot"] == "finished"
    assert status["tables"]["plans"]["assets"] == [
        "plans_changes",
        "plans_changes_csv",
        "plans_changes_jsonl",
    ]


def test_export_and_snapshot_take_a_table(sqlite_url: str, tmp_path: Path) -> None:
    settings = _settings(sqlite_url, tmp_path)
    _source(sqlite_url)
    _run(["init"], settings, tmp_path)
    out = tmp_path / "plans.csv"
    export = ["export", "--from-lsn", "1", "--to-lsn", "3", "--format", "csv", "--json"]
    summary = json.loads(
        _run([*export, "--out", str(out), "--table", "plans"], settings, tmp_path).stdout
    )
    assert summary["rows"] == 3 and out.read_text().count("old") == 3
    snapshot = _run(["snapshot", "--table", "plans", "--json"], settings, tmp_path)
    assert json.loads(snapshot.stdout)["rows_done"] == 3
    unknown = _run(["snapshot", "--table", "invoices"], settings, tmp_path, check=False)
    assert unknown.returncode == 2
    assert "table 'invoices' is not captured; captured: subscriptions, plans" in unknown.stderr


def test_init_refuses_a_table_without_a_primary_key(sqlite_url: str, tmp_path: Path) -> None:
    settings = _settings(sqlite_url, tmp_path)
    engine = _source(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (body TEXT)")
    env = {"SUBSCRIPTION_EXPORT_TABLES": "subscriptions,notes"}
    result = _run(["init"], None, tmp_path, check=False, env={**settings.as_env(), **env})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "table 'notes' has no primary key" in result.stderr
