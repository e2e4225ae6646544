"""The outbox (`sync_state.pushes`): merged records waiting to be pushed to a remote under a
fixed idempotency key, written with the decision and sent by `pushes.push_pending`, so a crash
between the write-back and the push re-sends the same key instead of forgetting it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.codec import dumps, loads
from subscription_export.core.db import insert_ignore, insert_ignore_many
from subscription_export.core.secrets import mask_in_text
from subscription_export.reconcile.sync_state import now, pushes

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
    insert_ignore(
        conn,
        pushes,
        push_row(
            key=key,
            destination=destination,
            subscription_id=subscription_id,
            window_key=window_key,
            lsn=lsn,
            record=record,
            delete_version=delete_version,
            plan_log_id=plan_log_id,
        ),
    )


def push_row(
    *,
    key: str,
    destination: str,
    subscription_id: str,
    window_key: str,
    lsn: int,
    record: Mapping[str, Any] | None,
    delete_version: int | None,
    plan_log_id: int,
) -> dict[str, Any]:
    """The outbox row `add_push` inserts (pending, no attempts yet)."""
    moment = now()
    return {
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
    }


def add_pushes(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """`add_push` of many `push_row`s: each supersedes the other pending pushes of its record,
    then all are inserted (a key already there stays as it is), in two statements."""
    supersede_many(
        conn, [(row["destination"], row["subscription_id"], row["idempotency_key"]) for row in rows]
    )
    insert_ignore_many(conn, pushes, rows)


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


_SUPERSEDE = (
    sa.update(pushes)
    .where(
        pushes.c.destination == sa.bindparam("d"),
        pushes.c.subscription_id == sa.bindparam("s"),
        pushes.c.status == "pending",
        pushes.c.idempotency_key != sa.bindparam("keep"),
    )
    .values(status=sa.bindparam("new_status"), updated_at=sa.bindparam("at"))
)


def supersede_many(conn: Connection, records: Sequence[tuple[str, str, str | None]]) -> None:
    """`supersede_pushes` of many (destination, subscription, key to keep or None), in one
    statement."""
    if not records:
        return
    moment = now()
    # no idempotency key is empty: keeping "" keeps nothing
    conn.execute(
        _SUPERSEDE,
        [
            {"d": d, "s": s, "keep": keep or "", "new_status": "superseded", "at": moment}
            for d, s, keep in records
        ],
    )


def pending_pushes(engine: Engine, destination: str, status: str = "pending") -> list[Push]:
    """The destination's pushes in this status (`pending`: still to send), oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(pushes)
            .where(pushes.c.destination == destination, pushes.c.status == status)
            .order_by(pushes.c.id)
        ).all()
    return [_push(r) for r in rows]


def pending_counts(engine: Engine) -> dict[str, int]:
    """Destination -> pushes still to send (`status`, the dashboard)."""
    query = (
        sa.select(pushes.c.destination, sa.func.count())
        .where(pushes.c.status == "pending")
        .group_by(pushes.c.destination)
    )
    with engine.connect() as conn:
        return {name: int(n) for name, n in conn.execute(query)}


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
    """Statuses: pending, sent, obsolete, superseded, dead_letter (attempts ran out: a dead
    letter of the destination holds it), discarded (that dead letter was discarded)."""
    shown = None if error is None else mask_in_text(error)  # may quote a URL with a password
    values: dict[str, Any] = {"status": status, "error": shown, "updated_at": now()}
    if attempted:
        values["attempts"] = pushes.c.attempts + 1
    conn.execute(sa.update(pushes).where(pushes.c.id == push_id).values(**values))


_SETTLE = (
    sa.update(pushes)
    .where(pushes.c.id == sa.bindparam("push_id"))
    .values(
        status=sa.bindparam("new_status"),
        error=sa.bindparam("new_error"),
        updated_at=sa.bindparam("at"),
        attempts=pushes.c.attempts + sa.bindparam("tried"),
    )
)


def settle_many(
    conn: Connection, settled: Sequence[tuple[int, str, str | None]], attempted: bool = False
) -> None:
    """`settle_push` of many (push id, status, error) in one statement."""
    if not settled:
        return
    moment, tried = now(), int(attempted)
    conn.execute(
        _SETTLE,
        [
            {
                "push_id": push_id,
                "new_status": status,
                "new_error": None if error is None else mask_in_text(error),
                "at": moment,
                "tried": tried,
            }
            for push_id, status, error in settled
        ],
    )
