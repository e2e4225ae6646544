"""Rows that could not be exported, kept with their LSN and reason until someone acts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.state.tables import quarantine


class QuarantineEntry(Protocol):
    lsn: int
    field: str | None
    reason: str
    raw: str


def record_quarantine(engine: Engine, window_key: str, rows: Sequence[QuarantineEntry]) -> None:
    """Idempotent per (window, LSN): re-exporting a window does not duplicate entries."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(sa.delete(quarantine).where(quarantine.c.window_key == window_key))
        if not rows:
            return
        conn.execute(
            sa.insert(quarantine),
            [
                {
                    "window_key": window_key,
                    "lsn": r.lsn,
                    "field": r.field,
                    "reason": r.reason,
                    "raw": r.raw,
                    "created_at": now,
                }
                for r in rows
            ],
        )


def list_quarantine(engine: Engine, limit: int = 100) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(quarantine).order_by(quarantine.c.lsn.desc()).limit(limit)
        ).mappings()
        return [dict(r) for r in rows]


def quarantined_lsns(engine: Engine, window_key: str) -> set[int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(quarantine.c.lsn).where(quarantine.c.window_key == window_key)
        ).all()
    return {int(r[0]) for r in rows}
