"""Bidirectional-sync state: sync bases, feed cursors, pending pushes, field provenance,
the manual conflict queue and the audit log.

Why these tables (all in their own MetaData, created by `init_sync_state`):

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

Queries: the feed cursors and the manual conflict queue are here (the CLI and `status` read
them from this module); sync bases and field provenance are in `sync_bases`, the outbox in
`outbox`, the audit log in `audit_log`. Functions take a `Connection`, so the reconcile can write
them inside the source transaction of its write-back when the state and the source are one
database. Records are stored as JSON by `core.codec` (money as exact decimal strings, times
ISO-8601 UTC with `Z`); the caller restores types from the capture schema. JSON `null` means
"no record" (deleted, or never had it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.codec import dumps, loads
from subscription_export.core.db import dialect_insert, insert_ignore
from subscription_export.state.migrate import upgrade
from subscription_export.state.tables import (
    sync_audit,
    sync_conflicts,
    sync_feed_cursors,
    sync_field_provenance,
    sync_pushes,
)

# The names the reconcile has always used for its tables (defined in `state/tables.py`).
feed_cursors = sync_feed_cursors
pushes = sync_pushes
field_provenance = sync_field_provenance
conflicts = sync_conflicts
audit = sync_audit


def init_sync_state(engine: Engine) -> None:
    """The state schema at head, sync tables included (`state.migrate.upgrade`: one query the
    first time per engine, nothing after)."""
    upgrade(engine)


# -- values ------------------------------------------------------------------------------------


def utc(moment: dt.datetime | None) -> dt.datetime | None:
    """SQLite drops tzinfo; every stored time is UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


# -- conflicts (manual queue) ------------------------------------------------------------------


@dataclass(frozen=True)
class Conflict:
    id: int
    destination: str
    subscription_id: str
    status: str
    strategy: str
    fields: list[str]
    base: dict[str, Any] | None
    base_log_id: int
    local: dict[str, Any] | None
    local_changed_at: dt.datetime
    remote: dict[str, Any] | None
    remote_changed_at: dt.datetime
    remote_version: int | None
    opened_cursor: int
    cursor: int
    created_at: dt.datetime
    updated_at: dt.datetime
    resolved_at: dt.datetime | None
    resolution: dict[str, Any] | None


def _conflict(r: Any) -> Conflict:
    return Conflict(
        id=r.id,
        destination=r.destination,
        subscription_id=r.subscription_id,
        status=r.status,
        strategy=r.strategy,
        fields=loads(r.fields),
        base=loads(r.base),
        base_log_id=int(r.base_log_id),
        local=loads(r.local),
        local_changed_at=utc(r.local_changed_at),  # type: ignore[arg-type]
        remote=loads(r.remote),
        remote_changed_at=utc(r.remote_changed_at),  # type: ignore[arg-type]
        remote_version=r.remote_version,
        opened_cursor=int(r.opened_cursor),
        cursor=int(r.cursor),
        created_at=utc(r.created_at),  # type: ignore[arg-type]
        updated_at=utc(r.updated_at),  # type: ignore[arg-type]
        resolved_at=utc(r.resolved_at),
        resolution=loads(r.resolution),
    )


def open_conflict(conn: Connection, destination: str, subscription_id: str) -> Conflict | None:
    row = conn.execute(
        sa.select(conflicts)
        .where(
            conflicts.c.destination == destination,
            conflicts.c.subscription_id == subscription_id,
            conflicts.c.status == "open",
        )
        .order_by(conflicts.c.id.desc())
    ).first()
    return _conflict(row) if row else None


def open_conflicts(
    conn: Connection, destination: str, subscription_ids: Collection[str]
) -> dict[str, Conflict]:
    """`open_conflict` of each of these subscriptions, in one query."""
    if not subscription_ids:
        return {}
    rows = conn.execute(
        sa.select(conflicts)
        .where(
            conflicts.c.destination == destination,
            conflicts.c.subscription_id.in_(sorted(subscription_ids)),
            conflicts.c.status == "open",
        )
        .order_by(conflicts.c.id.desc())
    ).all()
    out: dict[str, Conflict] = {}
    for (
        row
    ) in rows:  # newest first: the first of each subscription is the one `open_conflict` reads
        out.setdefault(row.subscription_id, _conflict(row))
    return out


def add_conflict(
    conn: Connection,
    *,
    destination: str,
    subscription_id: str,
    strategy: str,
    fields: Sequence[str],
    base: Mapping[str, Any] | None,
    base_log_id: int,
    local: Mapping[str, Any] | None,
    local_changed_at: dt.datetime,
    remote: Mapping[str, Any] | None,
    remote_changed_at: dt.datetime,
    remote_version: int | None,
    cursor: int,
) -> int:
    """Open a conflict (idempotent per opening feed cursor); returns its id."""
    moment = now()
    insert_ignore(
        conn,
        conflicts,
        {
            "destination": destination,
            "subscription_id": subscription_id,
            "status": "open",
            "strategy": strategy,
            "fields": dumps(list(fields)),
            "base": dumps(base),
            "base_log_id": base_log_id,
            "local": dumps(local),
            "local_changed_at": local_changed_at,
            "remote": dumps(remote),
            "remote_changed_at": remote_changed_at,
            "remote_version": remote_version,
            "opened_cursor": cursor,
            "cursor": cursor,
            "created_at": moment,
            "updated_at": moment,
        },
    )
    return int(
        conn.execute(
            sa.select(conflicts.c.id).where(
                conflicts.c.destination == destination,
                conflicts.c.subscription_id == subscription_id,
                conflicts.c.opened_cursor == cursor,
            )
        ).scalar_one()
    )


def update_conflict_remote(
    conn: Connection,
    conflict_id: int,
    *,
    remote: Mapping[str, Any] | None,
    remote_changed_at: dt.datetime,
    remote_version: int | None,
    cursor: int,
    fields: Sequence[str],
) -> None:
    """A later edit of the remote while the conflict is open replaces its remote side."""
    conn.execute(
        sa.update(conflicts)
        .where(conflicts.c.id == conflict_id, conflicts.c.cursor < cursor)
        .values(
            remote=dumps(remote),
            remote_changed_at=remote_changed_at,
            remote_version=remote_version,
            cursor=cursor,
            fields=dumps(list(fields)),
            updated_at=now(),
        )
    )


def close_conflict(conn: Connection, conflict_id: int, resolution: Mapping[str, Any]) -> None:
    moment = now()
    conn.execute(
        sa.update(conflicts)
        .where(conflicts.c.id == conflict_id)
        .values(status="resolved", resolution=dumps(resolution), resolved_at=moment)
    )


def get_conflict(engine: Engine, conflict_id: int) -> Conflict | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(conflicts).where(conflicts.c.id == conflict_id)).first()
    return _conflict(row) if row else None


def list_conflicts(
    engine: Engine,
    *,
    status: str | None = "open",
    destination: str | None = None,
    subscription_id: str | None = None,
) -> list[Conflict]:
    query = sa.select(conflicts).order_by(conflicts.c.id)
    if status is not None:
        query = query.where(conflicts.c.status == status)
    if destination is not None:
        query = query.where(conflicts.c.destination == destination)
    if subscription_id is not None:
        query = query.where(conflicts.c.subscription_id == subscription_id)
    with engine.connect() as conn:
        return [_conflict(r) for r in conn.execute(query).all()]
