"""Baseline: the state tables as the releases before alembic created them (`create_all` at every
start), with `sync_base` as it was before commit 6bb99c7 (no feed columns).

Every table and index is created IF NOT EXISTS: a database made by a release before alembic is
adopted by running this revision over it, which adds only the tables its release did not have yet
(`reconcile_metrics` came after 6bb99c7, the sync tables before it), exactly as that release's
next start would have done. `state.migrate` then stamps the revision the database's shape
matches.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _windows_and_watermarks()
    _export_bookkeeping()
    _export_metrics()
    _capture_and_reconcile_metrics()
    _dead_letters()
    _sync_bases()
    _sync_outbox()
    _sync_conflicts()
    _sync_audit()


def _windows_and_watermarks() -> None:
    """Windows cut from the change log, the exports done of them, watermarks."""
    op.create_table(
        "watermarks",
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("lsn", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer"),
        if_not_exists=True,
    )
    op.create_table(
        "windows",
        sa.Column("key", sa.String(length=41), nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=False),
        sa.Column("hi", sa.BigInteger(), nullable=False),
        sa.Column("changes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
        sa.UniqueConstraint("hi"),
        sa.UniqueConstraint("lo"),
        if_not_exists=True,
    )
    op.create_table(
        "window_exports",
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("window_key", sa.String(length=41), nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=False),
        sa.Column("hi", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "window_key"),
        if_not_exists=True,
    )
    op.create_index(
        "window_exports_by_lo",
        "window_exports",
        ["consumer", "lo"],
        unique=False,
        if_not_exists=True,
    )


def _export_bookkeeping() -> None:
    """What an export leaves beside its files: quarantined rows, leases, schema versions."""
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("window_key", sa.String(length=41), nullable=False),
        sa.Column("lsn", sa.BigInteger(), nullable=False),
        sa.Column("field", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("window_key", "lsn", name="quarantine_once_per_window"),
        if_not_exists=True,
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        if_not_exists=True,
    )
    op.create_table(
        "schema_registry",
        sa.Column("dataset", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("arrow_schema", sa.Text(), nullable=False),
        sa.Column("first_lsn", sa.BigInteger(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dataset", "version"),
        if_not_exists=True,
    )


def _export_metrics() -> None:
    """What the dashboard plots per (consumer, window)."""
    op.create_table(
        "export_metrics",
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("window_key", sa.String(length=41), nullable=False),
        sa.Column("lsn_from", sa.BigInteger(), nullable=False),
        sa.Column("lsn_to", sa.BigInteger(), nullable=False),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("records_created", sa.BigInteger(), nullable=False),
        sa.Column("records_updated", sa.BigInteger(), nullable=False),
        sa.Column("records_deleted", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("rows_per_s", sa.Float(), nullable=True),
        sa.Column("latency_p50_s", sa.Float(), nullable=True),
        sa.Column("latency_p95_s", sa.Float(), nullable=True),
        sa.Column("latency_max_s", sa.Float(), nullable=True),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("retries", sa.BigInteger(), nullable=False),
        sa.Column("dead_letters", sa.BigInteger(), nullable=False),
        sa.Column("quarantined", sa.BigInteger(), nullable=False),
        sa.Column("conflicts", sa.Text(), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "window_key"),
        if_not_exists=True,
    )
    op.create_index(
        "export_metrics_by_time",
        "export_metrics",
        ["finished_at"],
        unique=False,
        if_not_exists=True,
    )


def _capture_and_reconcile_metrics() -> None:
    """What the dashboard plots per capture sample and per reconcile."""
    op.create_table(
        "capture_lag",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_lsn", sa.BigInteger(), nullable=False),
        sa.Column("last_change_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sequenced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("waiting", sa.BigInteger(), nullable=False),
        sa.Column("horizon_stall_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index(
        "capture_lag_by_time", "capture_lag", ["sampled_at"], unique=False, if_not_exists=True
    )
    op.create_table(
        "reconcile_metrics",
        sa.Column("system", sa.String(length=100), nullable=False),
        sa.Column("cursor_from", sa.BigInteger(), nullable=False),
        sa.Column("cursor_to", sa.BigInteger(), nullable=False),
        sa.Column("outcomes", sa.Text(), nullable=False),
        sa.Column("written_back", sa.BigInteger(), nullable=False),
        sa.Column("pushed", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("system", "cursor_from", "cursor_to"),
        if_not_exists=True,
    )
    op.create_index(
        "reconcile_metrics_by_time",
        "reconcile_metrics",
        ["finished_at"],
        unique=False,
        if_not_exists=True,
    )


def _dead_letters() -> None:
    """Changes a destination did not accept."""
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("window_key", sa.String(length=41), nullable=False),
        sa.Column("lsn", sa.BigInteger(), nullable=False),
        sa.Column("subscription_id", sa.String(length=200), nullable=False),
        sa.Column("idempotency_key", sa.String(length=300), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("destination", "lsn", name="dead_letters_once_per_change"),
        if_not_exists=True,
    )
    op.create_index(
        "dead_letters_by_window",
        "dead_letters",
        ["destination", "window_key", "status"],
        unique=False,
        if_not_exists=True,
    )


def _sync_bases() -> None:
    """The bidirectional sync's position: bases, feed cursors, field provenance."""
    op.create_table(
        "sync_base",
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("subscription_id", sa.String(length=200), nullable=False),
        sa.Column("held_record", sa.Text(), nullable=False),
        sa.Column("held_version", sa.BigInteger(), nullable=True),
        sa.Column("agreed_record", sa.Text(), nullable=False),
        sa.Column("log_id", sa.BigInteger(), nullable=False),
        sa.Column("remote_cursor", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("destination", "subscription_id"),
        if_not_exists=True,
    )
    op.create_table(
        "sync_feed_cursors",
        sa.Column("system", sa.String(length=100), nullable=False),
        sa.Column("applied", sa.BigInteger(), nullable=False),
        sa.Column("requested", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("system"),
        if_not_exists=True,
    )
    op.create_table(
        "sync_field_provenance",
        sa.Column("subscription_id", sa.String(length=200), nullable=False),
        sa.Column("field", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("system", sa.String(length=100), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subscription_id", "field"),
        if_not_exists=True,
    )


def _sync_outbox() -> None:
    """Merged records waiting to be pushed."""
    op.create_table(
        "sync_pushes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(length=400), nullable=False),
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("subscription_id", sa.String(length=200), nullable=False),
        sa.Column("window_key", sa.String(length=300), nullable=False),
        sa.Column("lsn", sa.BigInteger(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("delete_version", sa.BigInteger(), nullable=True),
        sa.Column("plan_log_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
        if_not_exists=True,
    )
    op.create_index(
        "sync_pushes_pending",
        "sync_pushes",
        ["destination", "status"],
        unique=False,
        if_not_exists=True,
    )


def _sync_conflicts() -> None:
    """The manual conflict queue."""
    op.create_table(
        "sync_conflicts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("subscription_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("base", sa.Text(), nullable=False),
        sa.Column("base_log_id", sa.BigInteger(), nullable=False),
        sa.Column("local", sa.Text(), nullable=False),
        sa.Column("local_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("remote", sa.Text(), nullable=False),
        sa.Column("remote_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("remote_version", sa.BigInteger(), nullable=True),
        sa.Column("opened_cursor", sa.BigInteger(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "destination", "subscription_id", "opened_cursor", name="conflict_once"
        ),
        if_not_exists=True,
    )
    op.create_index(
        "sync_conflicts_open",
        "sync_conflicts",
        ["destination", "subscription_id", "status"],
        unique=False,
        if_not_exists=True,
    )


def _sync_audit() -> None:
    """Every decision of the reconcile."""
    op.create_table(
        "sync_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("subscription_id", sa.String(length=200), nullable=False),
        sa.Column("ref", sa.String(length=100), nullable=False),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("base", sa.Text(), nullable=False),
        sa.Column("local", sa.Text(), nullable=False),
        sa.Column("remote", sa.Text(), nullable=False),
        sa.Column("merged", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("conflict_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("destination", "subscription_id", "ref", name="audit_once"),
        if_not_exists=True,
    )
    op.create_index(
        "sync_audit_by_subscription",
        "sync_audit",
        ["subscription_id", "id"],
        unique=False,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("windows")
    op.drop_index("window_exports_by_lo", table_name="window_exports")
    op.drop_table("window_exports")
    op.drop_table("watermarks")
    op.drop_index("sync_pushes_pending", table_name="sync_pushes")
    op.drop_table("sync_pushes")
    op.drop_table("sync_field_provenance")
    op.drop_table("sync_feed_cursors")
    op.drop_index("sync_conflicts_open", table_name="sync_conflicts")
    op.drop_table("sync_conflicts")
    op.drop_table("sync_base")
    op.drop_index("sync_audit_by_subscription", table_name="sync_audit")
    op.drop_table("sync_audit")
    op.drop_table("schema_registry")
    op.drop_index("reconcile_metrics_by_time", table_name="reconcile_metrics")
    op.drop_table("reconcile_metrics")
    op.drop_table("quarantine")
    op.drop_table("leases")
    op.drop_index("export_metrics_by_time", table_name="export_metrics")
    op.drop_table("export_metrics")
    op.drop_index("dead_letters_by_window", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index("capture_lag_by_time", table_name="capture_lag")
    op.drop_table("capture_lag")
