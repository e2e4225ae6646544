"""A state database as a release before alembic left it: its DDL replayed from a frozen snapshot
(`snapshots/`, made by `snapshots/capture_ddl.py`) and rows written with plain INSERTs, so
nothing of today's code (which would upgrade the schema first) touches it before the test does."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.state import tables as t

SNAPSHOTS = Path(__file__).with_name("snapshots")
# The release before alembic (1a8ba31) and the one before sync_base had its feed columns and
# before reconcile_metrics existed (6bb99c7^).
RELEASES = ("state_1a8ba31", "state_pre_6bb99c7")

T0 = dt.datetime(2026, 11, 20, 8, 30, tzinfo=dt.UTC)
KEY = f"{1:020d}-{100:020d}"
BASE_RECORD = {"id": "s1", "amount": "12.50", "updated_at": "2026-11-20T08:30:00.000000Z"}


def create_release_schema(engine: Engine, release: str) -> None:
    ddl = (SNAPSHOTS / f"{release}.{engine.dialect.name}.sql").read_text()
    with engine.begin() as conn:
        for statement in filter(str.strip, ddl.split(";\n")):
            conn.exec_driver_sql(statement)


Rows = dict[sa.Table, list[dict[str, Any]]]


def legacy_rows(with_feed_columns: bool) -> Rows:
    """One or two rows per table that holds something a user would miss."""
    return {
        **_export_rows(),
        **_delivery_rows(),
        **_sync_rows(with_feed_columns),
        **_metrics_rows(),
    }


def _export_rows() -> Rows:
    return {
        t.watermarks: [
            {"consumer": "parquet", "lsn": 100, "updated_at": T0},
            {"consumer": "erp", "lsn": 100, "updated_at": T0},
        ],
        t.windows: [{"key": KEY, "lo": 1, "hi": 100, "changes": 100, "created_at": T0}],
        t.window_exports: [
            {
                "consumer": "parquet",
                "window_key": KEY,
                "lo": 1,
                "hi": 100,
                "rows": 100,
                "bytes": 4096,
                "sha256": "ab" * 32,
                "path": f"subscription_changes/{KEY}.parquet",
                "completed_at": T0,
            }
        ],
    }


def _delivery_rows() -> Rows:
    return {
        t.dead_letters: [
            {
                "destination": "crm",
                "window_key": KEY,
                "lsn": 42,
                "subscription_id": "s1",
                "idempotency_key": "crm:s1:42",
                "payload": json.dumps({"units": [{"key": "crm:s1:42", "body": {}}], "row": {}}),
                "error": "422 unprocessable",
                "attempts": 1,
                "first_seen": T0,
                "last_seen": T0,
                "status": "open",
            }
        ],
    }


def _sync_rows(with_feed_columns: bool) -> Rows:
    base: dict[str, Any] = {
        "destination": "erp",
        "subscription_id": "s1",
        "held_record": json.dumps(BASE_RECORD),
        "held_version": 3,
        "agreed_record": json.dumps(BASE_RECORD),
        "log_id": 41,
        "remote_cursor": 7,
        "updated_at": T0,
    }
    if with_feed_columns:
        base |= {"feed_record": json.dumps(BASE_RECORD), "feed_version": 3}
    return {
        t.sync_base: [base],
        t.sync_conflicts: [
            {
                "destination": "erp",
                "subscription_id": "s1",
                "status": "open",
                "strategy": "manual",
                "fields": json.dumps(["amount"]),
                "base": json.dumps(BASE_RECORD),
                "base_log_id": 41,
                "local": json.dumps(BASE_RECORD | {"amount": "13.00"}),
                "local_changed_at": T0,
                "remote": json.dumps(BASE_RECORD | {"amount": "14.00"}),
                "remote_changed_at": T0,
                "remote_version": 4,
                "opened_cursor": 8,
                "cursor": 8,
                "created_at": T0,
                "updated_at": T0,
            }
        ],
    }


def _metrics_rows() -> Rows:
    return {
        t.export_metrics: [
            {
                "consumer": "parquet",
                "window_key": KEY,
                "lsn_from": 1,
                "lsn_to": 100,
                "records": 100,
                "records_created": 60,
                "records_updated": 30,
                "records_deleted": 10,
                "bytes": 4096,
                "duration_s": 0.5,
                "rows_per_s": 200.0,
                "latency_p50_s": 1.5,
                "latency_p95_s": 2.5,
                "latency_max_s": 3.0,
                "errors": 0,
                "retries": 0,
                "dead_letters": 0,
                "quarantined": 0,
                "conflicts": "{}",
                "schema_version": 1,
                "finished_at": T0,
            }
        ],
        t.capture_lag: [
            {
                "sampled_at": T0,
                "last_lsn": 100,
                "last_change_at": T0,
                "last_sequenced_at": T0,
                "waiting": 0,
                "horizon_stall_s": 0.0,
            }
        ],
    }


def write_legacy_state(engine: Engine, with_feed_columns: bool) -> None:
    with engine.begin() as conn:
        for table, rows in legacy_rows(with_feed_columns).items():
            conn.execute(sa.insert(table), rows)
