"""Cutting the change log into immutable, contiguous windows (Dagster partitions).

A window's key is `{lo:020d}-{hi:020d}` (inclusive LSNs, zero-padded so keys sort as numbers;
DESIGN.md invariant 2). `window_key` and `parse_window_key` are the one place that format lives.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.errors import RangeError
from subscription_export.state.tables import windows

_KEY = re.compile(r"(\d{20})-(\d{20})")


def window_key(lo: int, hi: int) -> str:
    return f"{lo:020d}-{hi:020d}"


def parse_window_key(key: str) -> tuple[int, int]:
    """`(lo, hi)` of a window key, or a `RangeError` saying what a key looks like."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise RangeError(f"{key!r} is not a window key (expected FROM-TO, 20 digits each)")
    lo, hi = int(match[1]), int(match[2])
    if lo < 1 or hi < lo:
        raise RangeError(f"window {key!r} is empty or starts below LSN 1")
    return lo, hi


@dataclass(frozen=True)
class Window:
    lo: int
    hi: int

    @property
    def key(self) -> str:
        return window_key(self.lo, self.hi)

    @property
    def changes(self) -> int:
        return self.hi - self.lo + 1


def plan_windows(
    last_hi: int,
    last_lsn: int,
    age_of_lsn: Callable[[int], float | None],
    max_changes: int,
    max_age_s: float,
) -> list[Window]:
    """Full windows of `max_changes`; the remainder closes once its oldest change is `max_age_s`
    old, so a trickle of changes still exports within the latency target."""
    planned: list[Window] = []
    lo = last_hi + 1
    while last_lsn - lo + 1 >= max_changes:
        planned.append(Window(lo, lo + max_changes - 1))
        lo += max_changes
    if lo <= last_lsn:
        age = age_of_lsn(lo)
        if age is not None and age >= max_age_s:
            planned.append(Window(lo, last_lsn))
    return planned


def last_window_end(engine: Engine) -> int:
    with engine.connect() as conn:
        return last_window_end_in(conn)


def insert_windows(engine: Engine, planned: list[Window]) -> list[Window]:
    """Insert in one transaction; returns [] if another cutter got there first (UNIQUE lo)."""
    if not planned:
        return []
    now = dt.datetime.now(dt.UTC)
    try:
        with engine.begin() as conn:
            if last_window_end_in(conn) != planned[0].lo - 1:
                return []
            conn.execute(
                sa.insert(windows),
                [
                    {"key": w.key, "lo": w.lo, "hi": w.hi, "changes": w.changes, "created_at": now}
                    for w in planned
                ],
            )
    except sa.exc.IntegrityError:
        return []
    return planned


def last_window_end_in(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(windows.c.hi), 0))).scalar_one())


def list_windows(engine: Engine, after_hi: int = 0, limit: int | None = None) -> list[Window]:
    query = (
        sa.select(windows.c.lo, windows.c.hi).where(windows.c.hi > after_hi).order_by(windows.c.lo)
    )
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [Window(int(lo), int(hi)) for lo, hi in conn.execute(query)]


def recent_windows(engine: Engine, limit: int) -> list[Window]:
    query = sa.select(windows.c.lo, windows.c.hi).order_by(windows.c.lo.desc()).limit(limit)
    with engine.connect() as conn:
        return [Window(int(lo), int(hi)) for lo, hi in conn.execute(query)][::-1]


def find_window(engine: Engine, key: str) -> Window | None:
    query = sa.select(windows.c.lo, windows.c.hi).where(windows.c.key == key)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return Window(int(row[0]), int(row[1])) if row else None
