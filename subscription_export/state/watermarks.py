"""Watermark stores: a per-consumer LSN with compare-and-set, in SQL or Redis."""

from __future__ import annotations

import datetime as dt
from typing import Protocol
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.errors import ConfigError, SourceUnavailableError
from subscription_export.state.tables import watermarks


class WatermarkStore(Protocol):
    def get(self, consumer: str) -> int: ...

    def compare_and_set(self, consumer: str, expected: int, new: int) -> bool:
        """Set to `new` only if the stored value is `expected` (absent counts as 0)."""
        ...

    def all(self) -> dict[str, int]: ...


class SqlWatermarkStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, consumer: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(watermarks.c.lsn).where(watermarks.c.consumer == consumer)
            ).scalar()
        return int(value or 0)

    def compare_and_set(self, consumer: str, expected: int, new: int) -> bool:
        now = dt.datetime.now(dt.UTC)
        with self.engine.begin() as conn:
            updated = conn.execute(
                sa.update(watermarks)
                .where(watermarks.c.consumer == consumer, watermarks.c.lsn == expected)
                .values(lsn=new, updated_at=now)
            ).rowcount
            if updated:
                return True
            if expected != 0:
                return False
            exists = conn.execute(
                sa.select(watermarks.c.lsn).where(watermarks.c.consumer == consumer)
            ).first()
            if exists is not None:
                return False
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(watermarks).values(consumer=consumer, lsn=new, updated_at=now)
                    )
            except sa.exc.IntegrityError:
                return False  # a racer created it first
            return True

    def all(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(watermarks.c.consumer, watermarks.c.lsn)).all()
        return {c: int(v) for c, v in sorted(rows)}


_CAS_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if current ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


class RedisWatermarkStore:
    """All consumers in one hash; CAS is a Lua script, atomic on the server."""

    def __init__(self, url: str, namespace: str = "subscription_export") -> None:
        import redis  # only for Redis watermarks: ~6 MB an exporter without them never loads

        self._connection_error = redis.ConnectionError
        self.client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        self.key = f"{namespace}:watermarks"
        self._cas = self.client.register_script(_CAS_SCRIPT)

    def get(self, consumer: str) -> int:
        return int(self._call(self.client.hget, self.key, consumer) or 0)

    def compare_and_set(self, consumer: str, expected: int, new: int) -> bool:
        return bool(self._call(self._cas, keys=[self.key], args=[consumer, expected, new]))

    def all(self) -> dict[str, int]:
        raw = self._call(self.client.hgetall, self.key)
        return {k.decode(): int(v) for k, v in sorted(raw.items())}

    def _call(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except self._connection_error as exc:
            raise SourceUnavailableError(
                f"cannot reach Redis for watermarks: {exc} (is redis-server running?)"
            ) from None


def watermark_store(watermark_url: str | None, state_engine: Engine) -> WatermarkStore:
    """Redis when `WATERMARK_URL` is redis://…; otherwise the state database."""
    if not watermark_url:
        return SqlWatermarkStore(state_engine)
    parts = urlsplit(watermark_url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"WATERMARK_URL {watermark_url!r} must be redis://host:port/db (or unset for SQL)"
        )
    query = parse_qs(parts.query)
    namespace = query.pop("namespace", ["subscription_export"])[0]
    url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    return RedisWatermarkStore(url, namespace)
