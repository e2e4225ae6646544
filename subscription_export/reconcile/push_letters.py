"""Pushes that ran out of attempts become dead letters of their destination, in the table the
window delivery uses, so `dead-letters list|replay|discard` work on them (same idempotency
key, same body). A dead letter's fate comes back to the outbox at the next run: replayed ->
the push is `sent` (and the sync base learns what the remote holds), discarded -> `discarded`.

A push's dead letter has window key `PUSH_WINDOW_KEY` (it belongs to no window, so it never
holds a window back) and LSN minus the push id: unique per destination, and before every
change, so a replay sends it before the later changes of its record held back behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Connection, Engine

from subscription_export.delivery.clients import DeliveryResult, OutboundItem
from subscription_export.delivery.dead_letters import (
    PUSH_WINDOW_KEY,
    NewDeadLetter,
    record_dead_letters,
    statuses_by_lsn,
)
from subscription_export.reconcile.outbox import Push, pending_pushes, settle_push
from subscription_export.reconcile.sync_bases import get_base, mark_held
from subscription_export.reconcile.three_way import version_of


def letter_lsn(push: Push) -> int:
    return -push.id


def dead_letter_push(
    state: Engine,
    push: Push,
    item: OutboundItem,
    row: Mapping[str, Any],
    result: DeliveryResult,
) -> None:
    """Record the push as a dead letter, then mark it so (a crash in between re-sends it once
    more and records the same dead letter again: one row per destination and LSN)."""
    letter = NewDeadLetter(
        lsn=letter_lsn(push),
        subscription_id=push.subscription_id,
        idempotency_key=push.idempotency_key,
        units=item.units,
        row=dict(row),
        error=result.error or "not delivered",
        attempts=result.attempts,
    )
    record_dead_letters(state, push.destination, PUSH_WINDOW_KEY, [letter])
    with state.begin() as conn:
        settle_push(conn, push.id, "dead_letter", result.error, attempted=True)


def settle_dead_lettered(state: Engine, destination: str) -> None:
    """Pushes whose dead letter was replayed are `sent` (the remote holds their record);
    those whose dead letter was discarded are `discarded`."""
    waiting = pending_pushes(state, destination, status="dead_letter")
    if not waiting:
        return
    fates = statuses_by_lsn(state, destination, [letter_lsn(p) for p in waiting])
    with state.begin() as conn:
        for push in waiting:
            fate = fates.get(letter_lsn(push))
            if fate == "replayed":
                settle_push(conn, push.id, "sent", push.error)
                _held(conn, push)
            elif fate == "discarded":
                settle_push(conn, push.id, "discarded", push.error)


def _held(conn: Connection, push: Push) -> None:
    """The replayed record is what the remote holds, unless we know it holds a newer one."""
    version = version_of(push.record) if push.record is not None else push.delete_version
    base = get_base(conn, push.destination, push.subscription_id)
    known = base.held_version if base is not None else None
    if known is not None and version is not None and known > version:
        return
    mark_held(conn, push.destination, push.subscription_id, push.record, version, push.plan_log_id)
