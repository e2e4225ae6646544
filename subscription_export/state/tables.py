"""Every table of the project's state database, in one MetaData (SQLite by default, PostgreSQL in
production). Its shape is versioned by the alembic migrations in `state/migrations`
(`state/migrate.py` upgrades a database to head); a change here needs a migration, and
`test_migrations` fails until the head matches these definitions.

The modules that query a table import it from here: windows, watermarks, leases, quarantine
and schema registry (`state/`), metrics (`metrics/store.py`), dead letters
(`delivery/dead_letters.py`) and the bidirectional sync (`reconcile/sync_state.py`).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("consumer", sa.String(100), primary_key=True),
    sa.Column("lsn", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Windows cut from the change log: immutable once inserted; UNIQUE(lo) stops two cutters from
# creating overlapping windows.
windows = sa.Table(
    "windows",
    metadata,
    sa.Column("key", sa.String(41), primary_key=True),
    sa.Column("lo", sa.BigInteger, nullable=False, unique=True),
    sa.Column("hi", sa.BigInteger, nullable=False, unique=True),
    sa.Column("changes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# One row per (consumer, window) that finished: files and manifest exist. Watermarks only move
# across windows recorded here.
window_exports = sa.Table(
    "window_exports",
    metadata,
    sa.Column("consumer", sa.String(100), primary_key=True),
    sa.Column("window_key", sa.String(41), primary_key=True),
    sa.Column("lo", sa.BigInteger, nullable=False),
    sa.Column("hi", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("window_exports_by_lo", "consumer", "lo"),
)

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("window_key", sa.String(41), nullable=False),
    sa.Column("lsn", sa.BigInteger, nullable=False),
    sa.Column("field", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # open (held out of the window's files) | recovered (written by `quarantine replay`) |
    # discarded (`quarantine discard`); rows are never deleted once someone acted on them.
    sa.Column("status", sa.String(16), nullable=False, server_default="open"),
    sa.Column("action_id", sa.Integer),  # the quarantine_actions row that resolved it
    # The table's export it belongs to (TableDataset.name); NULL: `subscription_changes` (0006).
    sa.Column("dataset", sa.String(200)),
    sa.UniqueConstraint("window_key", "lsn", name="quarantine_once_per_window"),
)

# Audit of `quarantine replay` / `quarantine discard`: who, when, which LSNs, what came of it.
quarantine_actions = sa.Table(
    "quarantine_actions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("action", sa.String(16), nullable=False),  # replay | discard
    sa.Column("actor", sa.String(200), nullable=False),  # user@host
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_key", sa.String(41), nullable=False),
    sa.Column("lsns", sa.Text, nullable=False),  # JSON list: the LSNs the action was asked for
    sa.Column("recovered", sa.Text, nullable=False),  # JSON list: LSNs now in the files
    sa.Column("outcome", sa.Text, nullable=False),  # JSON: still bad, deliveries, superseded
    sa.Column("reason", sa.Text),  # discard: the operator's reason
    sa.Column("revision", sa.Integer),  # replay: the window's manifest revision it produced
    sa.Index("quarantine_actions_by_window", "window_key", "id"),
)

# What each destination that had already passed a window got of a recovered change: delivered
# (with its original LSN and idempotency key), superseded (the destination already holds a later
# change of the record, so it was not sent) or dead_letter. One row per (destination, LSN): a
# second replay sends nothing twice.
quarantine_deliveries = sa.Table(
    "quarantine_deliveries",
    metadata,
    sa.Column("destination", sa.String(100), primary_key=True),
    sa.Column("lsn", sa.BigInteger, primary_key=True),
    sa.Column("window_key", sa.String(41), nullable=False),
    sa.Column("subscription_id", sa.String(200), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

# Who is exporting a (consumer, window) right now: two runs of one window never write at once.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    # The holding process (state/leases.py): a dead one on this host is taken over at once,
    # any other only when its heartbeat stops (expires_at = last heartbeat + TTL). Nullable:
    # rows of releases before 0003 have none.
    sa.Column("host", sa.String(255), nullable=True),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("incarnation", sa.String(200), nullable=True),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
)


# Dataset schema versions (what the export files carry), per dataset.
schema_registry = sa.Table(
    "schema_registry",
    metadata,
    sa.Column("dataset", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("fields", sa.Text, nullable=False),  # JSON [[name, logical type], ...]
    sa.Column("arrow_schema", sa.Text, nullable=False),
    sa.Column("first_lsn", sa.BigInteger, nullable=False),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
)


# -- metrics (metrics/store.py: what the dashboard plots) -------------------------------------

export_metrics = sa.Table(
    "export_metrics",
    metadata,
    sa.Column("consumer", sa.String(100), primary_key=True),
    sa.Column("window_key", sa.String(41), primary_key=True),
    sa.Column("lsn_from", sa.BigInteger, nullable=False),
    sa.Column("lsn_to", sa.BigInteger, nullable=False),
    # created + updated + deleted + the snapshot's op 'r' rows (which have no column of their own)
    sa.Column("records", sa.BigInteger, nullable=False),
    sa.Column("records_created", sa.BigInteger, nullable=False),
    sa.Column("records_updated", sa.BigInteger, nullable=False),
    sa.Column("records_deleted", sa.BigInteger, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("rows_per_s", sa.Float),  # NULL when the duration was too short to measure
    sa.Column("latency_p50_s", sa.Float),  # NULL when the window had no rows
    sa.Column("latency_p95_s", sa.Float),
    sa.Column("latency_max_s", sa.Float),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("retries", sa.BigInteger, nullable=False),
    sa.Column("dead_letters", sa.BigInteger, nullable=False),
    sa.Column("quarantined", sa.BigInteger, nullable=False),
    sa.Column("conflicts", sa.Text, nullable=False),  # JSON {"outcome": count}, keys sorted
    sa.Column("schema_version", sa.Integer),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("export_metrics_by_time", "finished_at"),
)

capture_lag = sa.Table(
    "capture_lag",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_lsn", sa.BigInteger, nullable=False),
    sa.Column("last_change_at", sa.DateTime(timezone=True)),
    sa.Column("last_sequenced_at", sa.DateTime(timezone=True)),
    sa.Column("waiting", sa.BigInteger, nullable=False),
    sa.Column("horizon_stall_s", sa.Float, nullable=False),
    sa.Index("capture_lag_by_time", "sampled_at"),
)

# One row per reconcile of a system's feed range: what happened to the remote edits in it.
reconcile_metrics = sa.Table(
    "reconcile_metrics",
    metadata,
    sa.Column("system", sa.String(100), primary_key=True),
    sa.Column("cursor_from", sa.BigInteger, primary_key=True),
    sa.Column("cursor_to", sa.BigInteger, primary_key=True),
    sa.Column("outcomes", sa.Text, nullable=False),  # JSON {"outcome": count}, keys sorted
    sa.Column("written_back", sa.BigInteger, nullable=False),
    sa.Column("pushed", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("reconcile_metrics_by_time", "finished_at"),
)


# -- dead letters (delivery/dead_letters.py) -------------------------------------------------

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("destination", sa.String(100), nullable=False),
    sa.Column("window_key", sa.String(41), nullable=False),
    sa.Column("lsn", sa.BigInteger, nullable=False),
    sa.Column("subscription_id", sa.String(200), nullable=False),
    sa.Column("idempotency_key", sa.String(300), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # {"units": [{"key", "body"}], "row": {...}}
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.UniqueConstraint("destination", "lsn", name="dead_letters_once_per_change"),
    sa.Index("dead_letters_by_window", "destination", "window_key", "status"),
)


# The table each destination was last delivered from (state/destination_tables.py): a
# destination without a `table` key follows the first captured table, so reordering
# SUBSCRIPTION_EXPORT_TABLES would otherwise switch it to another table's rows silently.
destination_tables = sa.Table(
    "destination_tables",
    metadata,
    sa.Column("destination", sa.String(100), primary_key=True),
    sa.Column("table_name", sa.String(200), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


# -- bidirectional sync (reconcile/sync_state.py explains each table) ------------------------

sync_base = sa.Table(
    "sync_base",
    metadata,
    sa.Column("destination", sa.String(100), primary_key=True),
    sa.Column("subscription_id", sa.String(200), primary_key=True),
    sa.Column("held_record", sa.Text, nullable=False),  # JSON; "null": the remote has none
    sa.Column("held_version", sa.BigInteger),
    sa.Column("agreed_record", sa.Text, nullable=False),  # JSON; the last merged state
    sa.Column("log_id", sa.BigInteger, nullable=False),  # change-log id the held state follows
    sa.Column("remote_cursor", sa.BigInteger, nullable=False),
    # The last feed record of the subscription (JSON; "null": a delete) and the version it
    # carries: the image a later edit with the same version was made on.
    sa.Column("feed_record", sa.Text),
    sa.Column("feed_version", sa.BigInteger),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

sync_feed_cursors = sa.Table(
    "sync_feed_cursors",
    metadata,
    sa.Column("system", sa.String(100), primary_key=True),
    sa.Column("applied", sa.BigInteger, nullable=False),
    sa.Column("requested", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

sync_pushes = sa.Table(
    "sync_pushes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("idempotency_key", sa.String(400), nullable=False, unique=True),
    sa.Column("destination", sa.String(100), nullable=False),
    sa.Column("subscription_id", sa.String(200), nullable=False),
    sa.Column("window_key", sa.String(300), nullable=False),  # key = dest:window_key:lsn
    sa.Column("lsn", sa.BigInteger, nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # JSON; "null": push a delete
    sa.Column("delete_version", sa.BigInteger),  # version a delete carries
    sa.Column("plan_log_id", sa.BigInteger, nullable=False),
    # pending|sent|obsolete|superseded, dead_letter (retries ran out) or discarded (its dead letter)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("sync_pushes_pending", "destination", "status"),
)

sync_field_provenance = sa.Table(
    "sync_field_provenance",
    metadata,
    sa.Column("subscription_id", sa.String(200), primary_key=True),
    sa.Column("field", sa.String(200), primary_key=True),  # "*": the record's existence
    sa.Column("value", sa.Text, nullable=False),  # JSON of the value it produced
    sa.Column("system", sa.String(100), nullable=False),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    # The source row version the value is in from (NULL: recorded by a release before 0005).
    # Tells whether a remote's base image included it when the times tie.
    sa.Column("version", sa.Integer, nullable=True),
)

sync_conflicts = sa.Table(
    "sync_conflicts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("destination", sa.String(100), nullable=False),
    sa.Column("subscription_id", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open|resolved
    sa.Column("strategy", sa.String(32), nullable=False),
    sa.Column("fields", sa.Text, nullable=False),  # JSON list of conflicting fields
    sa.Column("base", sa.Text, nullable=False),
    sa.Column("base_log_id", sa.BigInteger, nullable=False),
    sa.Column("local", sa.Text, nullable=False),
    sa.Column("local_changed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("remote", sa.Text, nullable=False),
    sa.Column("remote_changed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("remote_version", sa.BigInteger),
    sa.Column("opened_cursor", sa.BigInteger, nullable=False),
    sa.Column("cursor", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("resolution", sa.Text),  # JSON: take, set, final record
    sa.UniqueConstraint("destination", "subscription_id", "opened_cursor", name="conflict_once"),
    sa.Index("sync_conflicts_open", "destination", "subscription_id", "status"),
)

sync_audit = sa.Table(
    "sync_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("destination", sa.String(100), nullable=False),
    sa.Column("subscription_id", sa.String(200), nullable=False),
    sa.Column("ref", sa.String(100), nullable=False),  # feed:<cursor> | conflict:<id>
    sa.Column("strategy", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("base", sa.Text, nullable=False),
    sa.Column("local", sa.Text, nullable=False),
    sa.Column("remote", sa.Text, nullable=False),
    sa.Column("merged", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),  # JSON: decisions, writes, provenance
    sa.Column("conflict_id", sa.Integer),
    sa.UniqueConstraint("destination", "subscription_id", "ref", name="audit_once"),
    sa.Index("sync_audit_by_subscription", "subscription_id", "id"),
)
