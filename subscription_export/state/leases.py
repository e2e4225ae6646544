"""Leases: at most one holder of a name (e.g. `parquet:<window>`) at a time, with expiry so a
crashed holder does not block forever."""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.errors import SubscriptionExportError
from subscription_export.state.tables import leases

DEFAULT_TTL_S = 15 * 60.0


class LeaseBusy(SubscriptionExportError):
    """Someone else holds the lease and did not release it in time."""

    exit_code = 3


@dataclass(frozen=True)
class Holder:
    holder: str
    acquired_at: dt.datetime


def default_holder(run_id: str | None = None) -> str:
    who = f"{socket.gethostname()}:{os.getpid()}"
    return f"run {run_id} ({who})" if run_id else f"process {who}"


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)  # SQLite drops tzinfo


def try_acquire(
    engine: Engine, name: str, holder: str, ttl_s: float = DEFAULT_TTL_S
) -> Holder | None:
    """Take the lease; None on success, else the current holder."""
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(seconds=ttl_s)
    try:
        with engine.begin() as conn:
            query = sa.select(leases.c.holder, leases.c.acquired_at, leases.c.expires_at).where(
                leases.c.name == name
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                conn.execute(
                    sa.insert(leases).values(
                        name=name, holder=holder, acquired_at=now, expires_at=expires
                    )
                )
                return None
            if row.holder != holder and _utc(row.expires_at) > now:
                return Holder(row.holder, _utc(row.acquired_at))
            conn.execute(
                sa.update(leases)
                .where(leases.c.name == name)
                .values(holder=holder, acquired_at=now, expires_at=expires)
            )
            return None
    except sa.exc.IntegrityError:
        return try_acquire(engine, name, holder, ttl_s)  # lost an insert race: read the winner


def release(engine: Engine, name: str, holder: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(leases).where(leases.c.name == name, leases.c.holder == holder))


@contextmanager
def lease(
    engine: Engine,
    name: str,
    holder: str,
    wait_s: float,
    ttl_s: float = DEFAULT_TTL_S,
    poll_s: float = 0.2,
) -> Iterator[None]:
    """Hold `name` for the block; wait up to `wait_s` for another holder, then raise LeaseBusy."""
    deadline = time.monotonic() + wait_s
    while (other := try_acquire(engine, name, holder, ttl_s)) is not None:
        if time.monotonic() >= deadline:
            raise LeaseBusy(
                f"{name} is being exported by {other.holder} since"
                f" {other.acquired_at:%Y-%m-%d %H:%M:%S} UTC; try again when it finishes"
            )
        time.sleep(poll_s)
    try:
        yield
    finally:
        release(engine, name, holder)
