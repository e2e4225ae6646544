"""Bidirectional-sync state: sync bases, feed cursors, pending pushes, field provenance,
the manual conflict queue and the audit log.

Why these tables (defined in `state/tables.py` with the rest of the state):

* `sync_base` - per (destination, subscription): what the remote is known to hold (`held_*`,
  the three-way base of its next edit, matched by the record `version` it carries), the last
  agreed (merged) state, and the last feed cursor reconciled for it. A feed change at or below
  `remote_cursor` was applied already, which is what makes a re-run after a crash idempotent.
* `feed_cursors` - per system: the cursor the reconcile job has applied up to (advanced only
  after a batch is applied) and the cursor the sensor has requested up to (mirrored from the
  sensor cursor, so the CLI can show lag without Dagster).
* `sync_pushes` - the outbox: merged records waiting to be pushed to a remote under a fixed
  idempotency key. Written with the decision, sent afterwards, so a crash between the
  write-back and the push re-sends the same key instead of forgetting or duplicating it.
* `field_provenance` - which system and UTC time produced the source's current value of a field
  (written by write-backs). Deciding conflicts by the provenance of each value, not by the
  record's latest time, is what keeps three systems order independent (docs/conflicts.md).
* `sync_conflicts` - the manual queue; `sync_audit` - every decision, queryable by subscription.

Functions take a `Connection`, so the reconcile can write them inside the source transaction of
its write-back when the state and the source are one database. Records are stored as JSON
(`sync_json.py`). The manual queue and the audit log are queried in `conflict_log.py`; their
functions are importable from here too, as the reconcile has always used them (`st.…`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.db import dialect_insert, insert_ignore, upsert
from subscription_export.reconcile.conflict_log import (
    AuditEntry,
    Conflict,
    add_audit,
    add_conflict,
    close_conflict,
    get_conflict,
    history,
    list_conflicts,
    open_conflict,
    update_conflict_remote,
)
from subscription_export.reconcile.sync_json import dumps, jsonable, loads, now, utc
from subscription_export.state.migrate import upgrade
from subscription_export.state.tables import (
    sync_audit,
    sync_base,
    sync_conflicts,
    sync_feed_cursors,
    sync_field_provenance,
    sync_pushes,
)

__all__ = [
    "AuditEntry",
    "Conflict",
    "FeedCursor",
    "Provenance",
    "Push",
    "SyncBase",
    "add_audit",
    "add_conflict",
    "add_push",
    "advance_applied",
    "all_cursors",
    "audit",
    "close_conflict",
    "conflicts",
    "dumps",
    "feed_cursors",
    "field_provenance",
    "get_base",
    "get_conflict",
    "get_cursor",
    "get_provenance",
    "history",
    "init_sync_state",
    "jsonable",
    "list_conflicts",
    "list_pushes",
    "loads",
    "mark_held",
    "now",
    "open_conflict",
    "pending_pushes",
    "pushes",
    "put_base",
    "put_provenance",
    "record_requested",
    "settle_push",
    "supersede_pushes",
    "sync_base",
    "update_conflict_remote",
    "utc",
]

# The names the reconcile has always used for its tables.
feed_cursors = sync_feed_cursors
pushes = sync_pushes
field_provenance = sync_field_provenance
conflicts = sync_conflicts
audit = sync_audit


def init_sync_state(engine: Engine) -> None:
    """The state schema at head, sync tables included (`state.migrate.upgrade`: one query the
    first time per engine, nothing after)."""
    upgrade(engine)


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


# -- feed cursors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedCursor:
    system: str
    applied: int
    requested: int
    updated_at: dt.datetime | None


def get_cursor(conn: Connection, system: str) -> FeedCursor:
    row = conn.execute(sa.select(feed_cursors).where(feed_cursors.c.system == system)).first()
    if row is None:
        return FeedCursor(system, 0, 0, None)
    return FeedCursor(system, int(row.applied), int(row.requested), utc(row.updated_at))


def all_cursors(engine: Engine) -> dict[str, FeedCursor]:
    with engine.connect() as conn:
        names = conn.execute(sa.select(feed_cursors.c.system)).scalars().all()
        return {name: get_cursor(conn, name) for name in sorted(names)}


def _move_cursors(conn: Connection, system: str, applied: int, requested: int) -> None:
    """Raise the stored cursors to at least these values, in one statement (never back, even
    when the sensor and a run write at the same moment)."""
    insert = dialect_insert(conn)
    greater = sa.func.greatest if conn.dialect.name == "postgresql" else sa.func.max
    stmt = insert(feed_cursors).values(
        system=system, applied=applied, requested=max(applied, requested), updated_at=now()
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["system"],
            set_={
                "applied": greater(feed_cursors.c.applied, stmt.excluded.applied),
                "requested": greater(
                    feed_cursors.c.requested, stmt.excluded.requested, stmt.excluded.applied
                ),
                "updated_at": stmt.excluded.updated_at,
            },
        )
    )


def advance_applied(engine: Engine, system: str, cursor: int) -> int:
    """Move the applied cursor forward (never back); returns the cursor now stored."""
    with engine.begin() as conn:
        _move_cursors(conn, system, cursor, cursor)
        return get_cursor(conn, system).applied


def record_requested(engine: Engine, system: str, cursor: int) -> None:
    """Mirror of the sensor cursor (what has been handed to a run, not yet necessarily applied)."""
    with engine.begin() as conn:
        _move_cursors(conn, system, 0, cursor)


# -- field provenance --------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    value: Any  # JSON value the system produced
    system: str
    changed_at: dt.datetime


def get_provenance(conn: Connection, subscription_id: str) -> dict[str, Provenance]:
    rows = conn.execute(
        sa.select(field_provenance).where(field_provenance.c.subscription_id == subscription_id)
    ).all()
    return {
        r.field: Provenance(loads(r.value), r.system, utc(r.changed_at))  # type: ignore[arg-type]
        for r in rows
    }


def put_provenance(
    conn: Connection,
    subscription_id: str,
    values: Mapping[str, Any],
    system: str,
    changed_at: dt.datetime,
) -> None:
    """Record that `system` produced these field values at `changed_at`."""
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
            },
            ("subscription_id", "field"),
        )


# -- pushes (outbox) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Push:
    id: int
    idempotency_key: str
    destination: str
    subscription_id: str
    window_key: str
    lsn: int
    record: dict[str, Any] | None  # JSON values; None: push a delete
    delete_version: int | None
    plan_log_id: int
    status: str
    attempts: int
    error: str | None


def add_push(
    conn: Connection,
    *,
    key: str,
    destination: str,
    subscription_id: str,
    window_key: str,
    lsn: int,
    record: Mapping[str, Any] | None,
    delete_version: int | None,
    plan_log_id: int,
) -> None:
    """Queue a push; an older pending push of the same record is superseded (only the latest
    merged state needs to reach the remote). Re-adding the same key changes nothing."""
    supersede_pushes(conn, destination, subscription_id, keep=key)
    moment = now()
    insert_ignore(
        conn,
        pushes,
        {
            "idempotency_key": key,
            "destination": destination,
            "subscription_id": subscription_id,
            "window_key": window_key,
            "lsn": lsn,
            "record": dumps(record),
            "delete_version": delete_version,
            "plan_log_id": plan_log_id,
            "status": "pending",
            "attempts": 0,
            "created_at": moment,
            "updated_at": moment,
        },
    )


def supersede_pushes(
    conn: Connection, destination: str, subscription_id: str, keep: str | None = None
) -> None:
    """A later decision about the record replaces what earlier ones still wanted to send (it
    was made knowing that those pushes had not reached the remote)."""
    query = sa.update(pushes).where(
        pushes.c.destination == destination,
        pushes.c.subscription_id == subscription_id,
        pushes.c.status == "pending",
    )
    if keep is not None:
        query = query.where(pushes.c.idempotency_key != keep)
    conn.execute(query.values(status="superseded", updated_at=now()))


def pending_pushes(engine: Engine, destination: str) -> list[Push]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(pushes)
            .where(pushes.c.destination == destination, pushes.c.status == "pending")
            .order_by(pushes.c.id)
        ).all()
    return [_push(r) for r in rows]


def list_pushes(engine: Engine, destination: str | None = None) -> list[Push]:
    query = sa.select(pushes).order_by(pushes.c.id)
    if destination is not None:
        query = query.where(pushes.c.destination == destination)
    with engine.connect() as conn:
        return [_push(r) for r in conn.execute(query).all()]


def _push(r: Any) -> Push:
    return Push(
        r.id,
        r.idempotency_key,
        r.destination,
        r.subscription_id,
        r.window_key,
        int(r.lsn),
        loads(r.record),
        r.delete_version,
        int(r.plan_log_id),
        r.status,
        int(r.attempts),
        r.error,
    )


def settle_push(
    conn: Connection, push_id: int, status: str, error: str | None = None, attempted: bool = False
) -> None:
    values: dict[str, Any] = {"status": status, "error": error, "updated_at": now()}
    if attempted:
        values["attempts"] = pushes.c.attempts + 1
    conn.execute(sa.update(pushes).where(pushes.c.id == push_id).values(**values))
