"""The project's own state (one SQL database: SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

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
    sa.UniqueConstraint("window_key", "lsn", name="quarantine_once_per_window"),
)

# Who is exporting a (consumer, window) right now: two runs of one window never write at once.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
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


def init_state(engine: Engine) -> None:
    metadata.create_all(engine)
