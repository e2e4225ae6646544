"""Dagster with several captured tables: one set of window assets (and checks) per table from
one factory, in a group per table, on the shared `cdc_windows` partitions; one run of a
partition materializes every table's files."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from subscription_export.core.settings import Settings
from subscription_export.defs.definitions import build_definitions
from subscription_export.defs.runner import run_cycle
from subscription_export.source.demo_table import create_demo_table
from subscription_export.source.schema import init_tables
from subscription_export_tests.helpers import insert, writer

PLANS_DDL = "CREATE TABLE plans (code TEXT PRIMARY KEY, title TEXT NOT NULL)"


def _settings(source_url: str, tmp_path: Path) -> Settings:
    engine = writer(source_url)
    create_demo_table(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(PLANS_DDL)
    init_tables(engine, ("subscriptions", "plans"))
    return Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
        tables="subscriptions,plans",
    )


def test_definitions_hold_per_table_assets_in_groups(sqlite_url: str, tmp_path: Path) -> None:
    graph = build_definitions(_settings(sqlite_url, tmp_path)).resolve_asset_graph()
    groups = {
        key.to_user_string(): graph.get(key).group_name
        for key in graph.get_all_asset_keys()
        if "changes" in key.to_user_string()
    }
    assert groups == {
        "subscription_changes": "cdc",
        "subscription_changes_csv": "cdc",
        "subscription_changes_jsonl": "cdc",
        "plans_changes": "cdc_plans",
        "plans_changes_csv": "cdc_plans",
        "plans_changes_jsonl": "cdc_plans",
    }
    plans_csv = graph.get(dg.AssetKey("plans_changes_csv"))
    assert plans_csv.parent_keys == {dg.AssetKey("plans_changes")}  # lineage per table
    checks = {key.asset_key.to_user_string() for key in graph.asset_check_keys}
    # the window checks on each table's Parquet asset, `no_records_held_back` on each sync asset
    assert checks == {
        "subscription_changes",
        "plans_changes",
        "erp_sync",
        "crm_sync",
        "accounting_sync",
    }
    partitions = {graph.get(dg.AssetKey(k)).partitions_def for k in groups}
    assert [p.name for p in partitions] == ["cdc_windows"]  # type: ignore[union-attr]


def test_one_partition_run_materializes_both_tables(source_url: str, tmp_path: Path) -> None:
    settings = _settings(source_url, tmp_path)
    engine = writer(source_url)
    with engine.begin() as conn:
        insert(conn, "s1")
        conn.exec_driver_sql("INSERT INTO plans VALUES ('basic', 'Basic')")
    instance = dg.DagsterInstance.ephemeral()
    result = run_cycle(settings, instance=instance)
    assert [r.success for r in result.runs] == [True]
    key = result.runs[0].window.key
    out = settings.export_dir
    assert pq.read_table(out / "plans_changes" / f"{key}.parquet").column("code").to_pylist() == [
        "basic"
    ]
    assert pq.read_table(out / "subscription_changes" / f"{key}.parquet").num_rows == 1
    assert (out / "plans_changes_jsonl" / f"{key}.jsonl").read_text().count("\n") == 1
    done = {
        e.asset_key.to_user_string()
        for e in instance.get_event_records(
            dg.EventRecordsFilter(dg.DagsterEventType.ASSET_MATERIALIZATION)
        )
        if e.asset_key is not None
    }
    assert {"plans_changes", "plans_changes_csv", "plans_changes_jsonl"} <= done
    assert {"subscription_changes", "subscription_changes_csv"} <= done
    checks = instance.get_event_records(
        dg.EventRecordsFilter(dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    )
    evaluations = [c.event_log_entry.dagster_event.event_specific_data for c in checks]  # type: ignore[union-attr]
    assert len(evaluations) == 15 and all(e.passed for e in evaluations)  # type: ignore[union-attr]
