"""The audit log (`sync_state.audit`): one row per decision, queryable by subscription."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.codec import dumps, loads, to_jsonable
from subscription_export.core.db import insert_ignore, insert_ignore_many
from subscription_export.reconcile.sync_state import audit, now, utc

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
        audit_row(
            destination=destination,
            subscription_id=subscription_id,
            ref=ref,
            strategy=strategy,
            outcome=outcome,
            base=base,
            local=local,
            remote=remote,
            merged=merged,
            detail=detail,
            conflict_id=conflict_id,
        ),
    )


def audit_row(
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
    render: Callable[[Any], str] = dumps,
) -> dict[str, Any]:
    """The `sync_audit` row of one decision (`render`: `dumps` or a `codec.Renderer`)."""
    return {
        "at": now(),
        "destination": destination,
        "subscription_id": subscription_id,
        "ref": ref,
        "strategy": strategy,
        "outcome": outcome,
        "base": render(base),
        "local": render(local),
        "remote": render(remote),
        "merged": render(merged),
        "detail": dumps(detail),  # its own each time: not worth keeping alive in `render`
        "conflict_id": conflict_id,
    }


def add_audits(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """`add_audit` of many `audit_row`s in one statement (a ref already there is kept)."""
    insert_ignore_many(conn, audit, rows)


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
