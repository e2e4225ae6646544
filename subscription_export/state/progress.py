"""Completed exports per consumer, and contiguous watermark advance over them (invariant 3)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.errors import WatermarkConflict
from subscription_export.state.tables import window_exports
from subscription_export.state.watermarks import WatermarkStore


@dataclass(frozen=True)
class CompletedExport:
    consumer: str
    window_key: str
    lo: int
    hi: int
    rows: int
    bytes: int
    sha256: str
    path: str


def record_completed(engine: Engine, done: CompletedExport) -> None:
    """Idempotent: re-exporting a window replaces its record (same range, same hash)."""
    values = {**done.__dict__, "completed_at": dt.datetime.now(dt.UTC)}
    with engine.begin() as conn:
        conn.execute(
            sa.delete(window_exports).where(
                window_exports.c.consumer == done.consumer,
                window_exports.c.window_key == done.window_key,
            )
        )
        conn.execute(sa.insert(window_exports).values(**values))


def completed_after(engine: Engine, consumer: str, lsn: int) -> list[tuple[int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(window_exports.c.lo, window_exports.c.hi)
            .where(window_exports.c.consumer == consumer, window_exports.c.lo > lsn)
            .order_by(window_exports.c.lo)
        ).all()
    return [(int(lo), int(hi)) for lo, hi in rows]


def contiguous_end(start: int, windows: list[tuple[int, int]]) -> int:
    """The highest LSN reachable from `start` through windows that follow each other exactly."""
    end = start
    for lo, hi in windows:
        if lo != end + 1:
            break
        end = hi
    return end


def advance_to(
    store: WatermarkStore, engine: Engine, consumer: str, expected: int, new: int
) -> None:
    """Move `consumer` from `expected` to `new`; (expected, new] must be covered by completed
    windows. Raises WatermarkConflict for a gap, a step backwards or a lost race."""
    if new <= expected:
        raise WatermarkConflict(f"{consumer}: watermark cannot move from {expected} to {new}")
    reachable = contiguous_end(expected, completed_after(engine, consumer, expected))
    if reachable < new:
        raise WatermarkConflict(
            f"{consumer}: LSNs {reachable + 1}..{new} have no completed export;"
            f" the watermark stays at {expected}"
        )
    if not store.compare_and_set(consumer, expected, new):
        raise WatermarkConflict(
            f"{consumer}: watermark is no longer {expected} (another run moved it)"
        )


def advance(store: WatermarkStore, engine: Engine, consumer: str) -> int:
    """Advance as far as completed windows reach contiguously; safe under concurrent callers.

    A backfill of an old window never moves a watermark backwards: it only adds a record.
    """
    while True:
        current = store.get(consumer)
        target = contiguous_end(current, completed_after(engine, consumer, current))
        if target == current:
            return current
        if store.compare_and_set(consumer, current, target):
            return target
        # Lost a race: re-read and try again from the newer value.


def completed_keys(engine: Engine, consumer: str, after_hi: int = 0) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(window_exports.c.window_key).where(
                window_exports.c.consumer == consumer, window_exports.c.hi > after_hi
            )
        ).all()
    return {r[0] for r in rows}
