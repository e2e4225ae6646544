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

Functions take a `Connection`, so the reconcile can write them inside the source transaction of
its write-back when the state and the source are one database. Records are stored as JSON with
money as decimal strings and times as ISO-8601 UTC with `Z`; the caller restores types from the
capture schema. JSON `null` means "no record" (deleted, or never had it).
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.codec import dumps, loads, to_jsonable
from subscription_export.core.db import dialect_insert, insert_ignore, upsert

metadata = sa.MetaData()

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

feed_cursors = sa.Table(
    "sync_feed_cursors",
    metadata,
    sa.Column("system", sa.String(100), primary_key=True),
    sa.Column("applied", sa.BigInteger, nullable=False),
    sa.Column("requested", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

pushes = sa.Table(
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
    sa.Column("status", sa.String(16), nullable=False),  # pending|sent|obsolete|superseded
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("sync_pushes_pending", "destination", "status"),
)

field_provenance = sa.Table(
    "sync_field_provenance",
    metadata,
    sa.Column("subscription_id", sa.String(200), primary_key=True),
    sa.Column("field", sa.String(200), primary_key=True),  # "*": the record's existence
    sa.Column("value", sa.Text, nullable=False),  # JSON of the value it produced
    sa.Column("system", sa.String(100), nullable=False),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
)

conflicts = sa.Table(
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

audit = sa.Table(
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

_initialized: weakref.WeakSet[Engine] = weakref.WeakSet()


def init_sync_state(engine: Engine) -> None:
    """Create the tables (idempotent; once per engine object per process)."""
    if engine in _initialized:
        return
    metadata.create_all(engine)
    _initialized.add(engine)


# -- values ------------------------------------------------------------------------------------


def utc(moment: dt.datetime | None) -> dt.datetime | None:
    """SQLite drops tzinfo; every stored time is UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


# -- audit log ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: dt.datetime
    destination: str
    subscription_id: str
    ref: str
    strategy: str
    outcome: str
    base: dict[str, Any] | None
    local: dict[str, Any] | None
    remote: dict[str, Any] | None
    merged: dict[str, Any] | None
    detail: dict[str, Any]
    conflict_id: int | None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["at"] = to_jsonable(self.at)
        return out


def add_audit(
    conn: Connection,
    *,
    destination: str,
    subscription_id: str,
    ref: str,
    strategy: str,
    outcome: str,
    base: Mapping[str, Any] | None,
    local: Mapping[str, Any] | None,
    remote: Mapping[str, Any] | None,
    merged: Mapping[str, Any] | None,
    detail: Mapping[str, Any],
    conflict_id: int | None = None,
) -> None:
    """One decision; recording the same (destination, subscription, ref) again is a no-op."""
    insert_ignore(
        conn,
        audit,
        {
            "at": now(),
            "destination": destination,
            "subscription_id": subscription_id,
            "ref": ref,
            "strategy": strategy,
            "outcome": outcome,
            "base": dumps(base),
            "local": dumps(local),
            "remote": dumps(remote),
            "merged": dumps(merged),
            "detail": dumps(detail),
            "conflict_id": conflict_id,
        },
    )


def history(
    engine: Engine, subscription_id: str, destination: str | None = None
) -> list[AuditEntry]:
    """Every decision about a subscription, oldest first."""
    query = sa.select(audit).where(audit.c.subscription_id == subscription_id).order_by(audit.c.id)
    if destination is not None:
        query = query.where(audit.c.destination == destination)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        AuditEntry(
            r.id,
            utc(r.at),  # type: ignore[arg-type]
            r.destination,
            r.subscription_id,
            r.ref,
            r.strategy,
            r.outcome,
            loads(r.base),
            loads(r.local),
            loads(r.remote),
            loads(r.merged),
            loads(r.detail),
            r.conflict_id,
        )
        for r in rows
    ]
