"""Give committed changes gap-free LSNs.

SQLite numbers rows in the trigger (one writer at a time). PostgreSQL writers commit out of
order, so a serial column would let an exporter skip a late commit; instead one sequencer
(advisory lock) numbers, after the fact, every change-log row its snapshot sees committed, in
insertion (`id`) order, from MAX(lsn) + 1. A row committed later gets a higher LSN when it
becomes visible, so no reader ever finds an unseen LSN below one it has seen; row locks make a
key's later change both a later `id` and visible no earlier, so a key's LSNs follow its commit
order. No open transaction needs waiting for (proof: docs/architecture.md, "LSN sequencing on
PostgreSQL").
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.db import is_postgres
from subscription_export.source.holders import (
    BLOCKS_SEQUENCER,
    SEQUENCER_LOCK,
    Holder,
    change_log_holders,
)

_BATCH = 200_000
_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a `lock_timeout`

# `top` is MATERIALIZED so MAX(lsn) is read once, before any row of this batch is numbered.
_SEQUENCE_PG = sa.text(
    """
    WITH ready AS (
        SELECT id, row_number() OVER (ORDER BY id) AS rn
        FROM subscription_change_log WHERE lsn IS NULL
        ORDER BY id
        LIMIT :batch
    ),
    top AS MATERIALIZED (SELECT COALESCE(MAX(lsn), 0) AS lsn FROM subscription_change_log)
    UPDATE subscription_change_log l SET lsn = top.lsn + ready.rn
    FROM ready, top WHERE l.id = ready.id
    """
)

# Committed changes still without an LSN: committed during the call, or the sequencer was held.
_WAITING_PG = sa.text("SELECT COUNT(*) FROM subscription_change_log WHERE lsn IS NULL")


@dataclass(frozen=True)
class SequenceResult:
    numbered: int
    last_lsn: int
    waiting: int  # committed changes without an LSN when the call returned (PostgreSQL)
    held_by: tuple[Holder, ...] = ()  # who kept the sequencer from its locks, if anyone


def last_lsn(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT COALESCE(MAX(lsn), 0) FROM subscription_change_log")
            ).scalar_one()
        )


def _number_batch(conn: Connection, batch: int, wait_s: float | None) -> int:
    if wait_s is not None:  # 0 would mean "no timeout" to PostgreSQL
        timeout_ms = max(1, round(wait_s * 1000))
        conn.execute(sa.text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{timeout_ms}"})
    take_sequencer_lock(conn)
    return conn.execute(_SEQUENCE_PG, {"batch": batch}).rowcount


def take_sequencer_lock(conn: Connection) -> None:
    """The sequencer's advisory lock, held until `conn`'s transaction ends: whoever holds it is
    the only one handing out LSNs (PostgreSQL)."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": SEQUENCER_LOCK})


def number_committed(conn: Connection, batch: int = _BATCH) -> int:
    """Number every row this transaction sees committed and unnumbered; the caller holds
    `take_sequencer_lock` (the snapshot numbers the waiting rows before its own, so that its
    rows can take the next LSNs directly: source/snapshot.py)."""
    numbered = 0
    while True:
        count = conn.execute(_SEQUENCE_PG, {"batch": batch}).rowcount
        numbered += count
        if count < batch:
            return numbered


def _is_lock_timeout(exc: sa.exc.OperationalError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE


def sequence(engine: Engine, batch: int = _BATCH, wait_s: float | None = None) -> SequenceResult:
    """Number every committed change; a no-op on SQLite. Safe to call from many processes.

    The sequencer waits for its locks (another sequencer's, or DDL on the change log) up to
    `wait_s` seconds (None: as long as it takes); when they stay taken it returns what it has
    numbered so far, with `held_by` naming the backends that hold them.
    """
    if not is_postgres(engine):
        return SequenceResult(0, last_lsn(engine), 0)
    numbered = 0
    held_by: tuple[Holder, ...] = ()
    while True:
        try:
            with engine.begin() as conn:
                count = _number_batch(conn, batch, wait_s)
        except sa.exc.OperationalError as exc:
            if not _is_lock_timeout(exc):
                raise
            held_by = tuple(h for h in change_log_holders(engine) if h.effect == BLOCKS_SEQUENCER)
            break
        numbered += count
        if count < batch:
            break
    with engine.connect() as conn:
        waiting = int(conn.execute(_WAITING_PG).scalar_one())
    return SequenceResult(numbered, last_lsn(engine), waiting, held_by)
