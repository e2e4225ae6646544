"""Moving watermarks between stores (state DB ↔ Redis) when `WATERMARK_URL` changes.

A consumer's watermark only ever grows, so a copy is a merge where the higher value wins: the
target is raised by compare-and-set to the source's value and never lowered. Running it again
moves nothing (idempotent), and a run advancing the target meanwhile is never undone (a lost
compare-and-set reads the target again).
"""

from __future__ import annotations

from dataclasses import dataclass

from subscription_export.core.db import engine_for, require_existing
from subscription_export.state.migrate import upgrade
from subscription_export.state.watermarks import (
    RedisWatermarkStore,
    SqlWatermarkStore,
    WatermarkStore,
    checked_redis_url,
    is_redis_url,
)


@dataclass(frozen=True)
class Move:
    consumer: str
    before: int  # the target's watermark before the merge
    after: int  # and after it (the higher of both stores)

    @property
    def moved(self) -> bool:
        return self.after != self.before

    def as_dict(self) -> dict[str, object]:
        return {"consumer": self.consumer, "before": self.before, "after": self.after}


def open_store(url: str) -> WatermarkStore:
    """The watermark store at `url`: Redis for redis://, rediss://, unix://; otherwise the state
    database at that SQLAlchemy URL, which must exist already (`init` creates it)."""
    if is_redis_url(url):
        return RedisWatermarkStore(*checked_redis_url(url))
    require_existing(url, "state")
    engine = engine_for(url, writer=True)
    upgrade(engine)
    return SqlWatermarkStore(engine)


def merge_watermarks(source: WatermarkStore, target: WatermarkStore) -> list[Move]:
    """Raise each of `target`'s watermarks to `source`'s where it is lower; one `Move` per
    consumer `source` knows, in name order."""
    moves = []
    for consumer, wanted in source.all().items():
        while True:
            current = target.get(consumer)
            if current >= wanted:
                moves.append(Move(consumer, current, current))
                break
            if target.compare_and_set(consumer, current, wanted):
                moves.append(Move(consumer, current, wanted))
                break
    return moves
