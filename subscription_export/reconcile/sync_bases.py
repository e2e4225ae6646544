"""Per (destination, subscription) working state of the reconcile: the sync base (what the
remote holds, the last agreed record, the last feed record) and the provenance of each field
value a write-back produced (docs/conflicts.md, "Which base" and "Three systems").
Tables: `sync_state.sync_base`, `sync_state.field_provenance`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from subscription_export.core.codec import dumps, loads
from subscription_export.core.db import upsert
from subscription_export.reconcile.sync_state import field_provenance, now, utc
from subscription_export.state.tables import sync_base

# -- sync base ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncBase:
    destination: str
    subscription_id: str
    held_record: dict[str, Any] | None  # JSON values
    held_version: int | None
    agreed_record: dict[str, Any] | None
    log_id: int
    remote_cursor: int
    updated_at: dt.datetime
    feed_record: dict[str, Any] | None = None
    feed_version: int | None = None


def get_base(conn: Connection, destination: str, subscription_id: str) -> SyncBase | None:
    row = conn.execute(
        sa.select(sync_base).where(
            sync_base.c.destination == destination,
            sync_base.c.subscription_id == subscription_id,
        )
    ).first()
    if row is None:
        return None
    return SyncBase(
        row.destination,
        row.subscription_id,
        loads(row.held_record),
        row.held_version,
        loads(row.agreed_record),
        int(row.log_id),
        int(row.remote_cursor),
        utc(row.updated_at),  # type: ignore[arg-type]
        loads(row.feed_record),
        row.feed_version,
    )


def put_base(
    conn: Connection,
    destination: str,
    subscription_id: str,
    *,
    held_record: Mapping[str, Any] | None,
    held_version: int | None,
    agreed_record: Mapping[str, Any] | None,
    log_id: int,
    remote_cursor: int,
    feed_record: Mapping[str, Any] | None,
    feed_version: int | None,
) -> None:
    """Upsert; `remote_cursor` never moves backwards (a late re-run cannot un-apply), and the
    feed record is only replaced by the record of a later feed change."""
    current = get_base(conn, destination, subscription_id)
    cursor = max(remote_cursor, current.remote_cursor) if current else remote_cursor
    if current is not None and remote_cursor < current.remote_cursor:
        feed_record, feed_version = current.feed_record, current.feed_version
    upsert(
        conn,
        sync_base,
        {
            "destination": destination,
            "subscription_id": subscription_id,
            "held_record": dumps(held_record),
            "held_version": held_version,
            "agreed_record": dumps(agreed_record),
            "log_id": log_id,
            "remote_cursor": cursor,
            "feed_record": dumps(feed_record),
            "feed_version": feed_version,
            "updated_at": now(),
        },
        ("destination", "subscription_id"),
    )


def mark_held(
    conn: Connection,
    destination: str,
    subscription_id: str,
    record: Mapping[str, Any] | None,
    version: int | None,
    log_id: int,
) -> None:
    """After a push: the remote holds `record` now."""
    conn.execute(
        sa.update(sync_base)
        .where(
            sync_base.c.destination == destination,
            sync_base.c.subscription_id == subscription_id,
        )
        .values(held_record=dumps(record), held_version=version, log_id=log_id, updated_at=now())
    )


# -- field provenance --------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    value: Any  # JSON value the system produced
    system: str
    changed_at: dt.datetime
    version: int | None = None  # the source row version the value is in from (None: unknown)


def get_provenance(conn: Connection, subscription_id: str) -> dict[str, Provenance]:
    rows = conn.execute(
        sa.select(field_provenance).where(field_provenance.c.subscription_id == subscription_id)
    ).all()
    return {
        r.field: Provenance(loads(r.value), r.system, utc(r.changed_at), r.version)  # type: ignore[arg-type]
        for r in rows
    }


def put_provenance(
    conn: Connection,
    subscription_id: str,
    values: Mapping[str, Any],
    system: str,
    changed_at: dt.datetime,
    version: int | None = None,
) -> None:
    """Record that `system` produced these field values at `changed_at`, present in the
    source row from `version` on."""
    for name, value in sorted(values.items()):
        upsert(
            conn,
            field_provenance,
            {
                "subscription_id": subscription_id,
                "field": name,
                "value": dumps(value),
                "system": system,
                "changed_at": changed_at,
                "version": version,
            },
            ("subscription_id", "field"),
        )
