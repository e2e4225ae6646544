"""Watermark stores: a per-consumer LSN with compare-and-set, in SQL or Redis."""

from __future__ import annotations

import datetime as dt
from typing import Protocol
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.errors import ConfigError, SourceUnavailableError
from subscription_export.core.secrets import mask_in_text, mask_url
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
                f"cannot reach Redis for watermarks: {mask_in_text(str(exc))}"
                " (is redis-server running?)"
            ) from None


REDIS_SCHEMES = ("redis", "rediss", "unix")


def is_redis_url(url: str) -> bool:
    return urlsplit(url).scheme in REDIS_SCHEMES


def watermark_store(watermark_url: str | None, state_engine: Engine) -> WatermarkStore:
    """Redis when `WATERMARK_URL` is redis://…; otherwise the state database."""
    if not watermark_url:
        return SqlWatermarkStore(state_engine)
    url, namespace = checked_redis_url(watermark_url)
    return RedisWatermarkStore(url, namespace)


def checked_redis_url(watermark_url: str) -> tuple[str, str]:
    """(URL for redis-py, key namespace). redis-py reads `/9x` as db 0 and a bad port late or
    not at all: every part is checked here, and a mistake is one line naming that part (the
    URL shown with its password masked)."""
    shown = mask_url(watermark_url)

    def refuse(problem: str) -> ConfigError:
        return ConfigError(
            f"WATERMARK_URL {shown!r}: {problem}; use redis://[:password@]host:port/db,"
            " rediss://… or unix:///path.sock?db=N (or unset it for watermarks in the state DB)"
        )

    parts = urlsplit(watermark_url)
    if parts.scheme not in REDIS_SCHEMES:
        raise refuse(f"unsupported scheme {parts.scheme!r}")
    host_port = parts.netloc.rpartition("@")[2]
    try:
        parts.port  # noqa: B018  # urllib checks the port only when asked for it
    except ValueError:
        raise refuse(f"port {host_port.rpartition(':')[2]!r} is not a number") from None
    query = parse_qs(parts.query)
    databases = query.get("db", [])
    if parts.scheme != "unix" and parts.path.strip("/"):
        databases = [parts.path.strip("/"), *databases]
    for db in databases:
        if not db.isdigit():
            raise refuse(f"database {db!r} is not a number")
    namespace = query.pop("namespace", ["subscription_export"])[0]
    url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    return url, namespace
