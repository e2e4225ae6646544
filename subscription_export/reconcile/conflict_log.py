"""The manual conflict queue (`sync_conflicts`) and the audit log of every decision
(`sync_audit`): what a person reads and resolves. Functions that write take a `Connection`, so a
decision is recorded in the transaction of its write-back."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.db import insert_ignore
from subscription_export.reconcile.sync_json import dumps, jsonable, loads, now, utc
from subscription_export.state.tables import sync_audit as audit
from subscription_export.state.tables import sync_conflicts as conflicts

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
        out["at"] = jsonable(self.at)
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
