"""Leases: at most one holder of a name (e.g. `parquet:<window>`) at a time.

A row records the holder's name, its process (host, pid, incarnation: `core/processes.py`) and a
heartbeat. While the block runs, a thread renews the lease every TTL/3 (`lease_ttl_s`, 60 s), so
`expires_at` is the last heartbeat + TTL. Another run takes the lease over:

- at once when the holder process is certainly gone: it ran on this host (same boot and pid
  namespace) and its pid is dead, a zombie, or now another process's;
- from any host, once the heartbeat is older than the TTL (the holder died elsewhere, hung, or
  lost the state database).

Every takeover is logged (who took over from whom). A waiting run logs who holds the lease and
until when, once, then its progress. Takeover and renewal are compare-and-set on the row's
`acquired_at` (the acquisition's token), so two waiters never both win, and a holder whose lease
was taken over learns it: `Held.check()` renews synchronously and raises `LeaseLost`, and the
callers call it right before they record anything (manifest, completion, watermark), so a holder
that lost its lease stops before writing - never two writers.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core import processes
from subscription_export.core.errors import SubscriptionExportError
from subscription_export.core.processes import ProcessId
from subscription_export.core.stopping import deferred, stoppable_sleep
from subscription_export.state.tables import leases

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 60.0
PROGRESS_EVERY_S = 30.0  # a waiting run says it still waits this often


class LeaseBusy(SubscriptionExportError):
    """Someone else holds the lease and did not release it in time."""

    exit_code = 3


class LeaseLost(SubscriptionExportError):
    """The lease was taken over while this holder worked (its heartbeat stopped for a TTL):
    nothing was recorded, the new holder does the work."""

    exit_code = 3


@dataclass(frozen=True)
class Holder:
    holder: str
    acquired_at: dt.datetime
    expires_at: dt.datetime | None = None
    process: ProcessId | None = None

    def describe(self) -> str:
        until = f", until {self.expires_at:%Y-%m-%d %H:%M:%S} UTC" if self.expires_at else ""
        return f"{self.holder} since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC{until}"


def default_holder(run_id: str | None = None) -> str:
    who = f"{socket.gethostname()}:{os.getpid()}"
    return f"run {run_id} ({who})" if run_id else f"process {who}"


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)  # SQLite drops tzinfo


def _holder_of(row: sa.Row) -> Holder:
    process = None
    if row.host is not None and row.pid is not None:
        process = ProcessId(row.host, row.pid, row.incarnation or "")
    return Holder(row.holder, _utc(row.acquired_at), _utc(row.expires_at), process)


@dataclass(frozen=True)
class _Claim:
    """The outcome of one attempt: `busy` (someone else holds it) or ours, maybe taken over."""

    busy: Holder | None = None
    token: dt.datetime | None = None
    took_over: Holder | None = None
    holder_gone: bool = False  # the previous holder's process is certainly dead (this host)


def _takeover_reason(row: sa.Row, holder: str, now: dt.datetime) -> str | None:
    """Why a row held by someone else may be taken now; None while it is validly held."""
    if _utc(row.expires_at) <= now:
        return "its heartbeat stopped" if row.heartbeat_at is not None else "it expired"
    previous = _holder_of(row)
    if previous.process is not None and processes.is_gone(previous.process):
        return f"its process {previous.process.describe()} is gone"
    return None


def _claim(engine: Engine, name: str, holder: str, ttl_s: float) -> _Claim:
    me = processes.current()
    now = dt.datetime.now(dt.UTC)
    ours = {
        "holder": holder,
        "acquired_at": now,
        "expires_at": now + dt.timedelta(seconds=ttl_s),
        "host": me.host,
        "pid": me.pid,
        "incarnation": me.incarnation,
        "heartbeat_at": now,
    }
    with engine.begin() as conn:
        row = conn.execute(sa.select(leases).where(leases.c.name == name)).first()
        if row is None:
            conn.execute(sa.insert(leases).values(name=name, **ours))
            return _Claim(token=now)
        previous = _holder_of(row)
        mine = row.holder == holder and (row.host, row.pid) == (me.host, me.pid)
        reason = None if row.holder == holder else _takeover_reason(row, holder, now)
        if row.holder != holder and reason is None:
            return _Claim(busy=previous)
        if mine:  # re-entrant: keep the token, extend
            ours["acquired_at"] = now = previous.acquired_at
        # Compare-and-set on the token: of two waiters taking over the same row, one wins.
        taken = conn.execute(
            sa.update(leases)
            .where(leases.c.name == name, leases.c.acquired_at == row.acquired_at)
            .values(**ours)
        ).rowcount
    if taken != 1:
        return _claim(engine, name, holder, ttl_s)  # lost a race: look again
    if mine:
        return _Claim(token=now)
    gone = previous.process is not None and processes.is_gone(previous.process)
    log.warning(
        "%s: %s took the lease over from %s (%s)",
        name,
        holder,
        previous.describe(),
        reason or "same holder name, earlier process",
    )
    return _Claim(token=now, took_over=previous, holder_gone=gone)


def try_acquire(
    engine: Engine, name: str, holder: str, ttl_s: float = DEFAULT_TTL_S
) -> Holder | None:
    """Take the lease; None on success, else the current holder."""
    try:
        return _claim(engine, name, holder, ttl_s).busy
    except sa.exc.IntegrityError:
        return try_acquire(engine, name, holder, ttl_s)  # lost an insert race: read the winner


def release(engine: Engine, name: str, holder: str, token: dt.datetime | None = None) -> None:
    """Give the lease up (only this acquisition's, when `token` is given)."""
    query = sa.delete(leases).where(leases.c.name == name, leases.c.holder == holder)
    if token is not None:
        query = query.where(leases.c.acquired_at == token)
    with engine.begin() as conn:
        conn.execute(query)


def renew(engine: Engine, name: str, holder: str, token: dt.datetime, ttl_s: float) -> bool:
    """Heartbeat: extend the lease by `ttl_s` from now; False if it is no longer ours."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        return (
            conn.execute(
                sa.update(leases)
                .where(
                    leases.c.name == name,
                    leases.c.holder == holder,
                    leases.c.acquired_at == token,
                )
                .values(heartbeat_at=now, expires_at=now + dt.timedelta(seconds=ttl_s))
            ).rowcount
            == 1
        )


def current_holder(engine: Engine, name: str) -> Holder | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(leases).where(leases.c.name == name)).first()
    return None if row is None else _holder_of(row)


@dataclass
class Held:
    """A lease this process holds; `check()` before recording anything."""

    engine: Engine
    name: str
    holder: str
    token: dt.datetime
    ttl_s: float
    took_over: Holder | None = None
    holder_gone: bool = False  # `took_over`'s process is certainly dead: its files may go
    lost: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """Renew now, or raise `LeaseLost` if another holder has the lease."""
        if not self.lost.is_set() and renew(
            self.engine, self.name, self.holder, self.token, self.ttl_s
        ):
            return
        self.lost.set()
        other = current_holder(self.engine, self.name)
        now = f"held by {other.describe()}" if other else "released by someone else"
        raise LeaseLost(
            f"{self.name}: the lease of {self.holder} was lost while it worked (now {now});"
            " it stopped before recording anything"
        )

    def stop_if_lost(self) -> None:
        """No query: raise `LeaseLost` if the heartbeat found the lease lost (between items)."""
        if self.lost.is_set():
            self.check()


def _heartbeat(held: Held, stop: threading.Event) -> None:
    """Renew every TTL/3 until stopped; a lease found lost is flagged for `check()`."""
    while not stop.wait(held.ttl_s / 3):
        try:
            if renew(held.engine, held.name, held.holder, held.token, held.ttl_s):
                continue
        except sa.exc.SQLAlchemyError as exc:  # the next beat may get through; TTL/3 to spare
            log.warning("%s: lease heartbeat failed: %s", held.name, exc)
            continue
        held.lost.set()
        log.error("%s: lease of %s lost (taken over); this run will stop", held.name, held.holder)
        return


def _wait_for(
    engine: Engine, name: str, holder: str, wait_s: float, ttl_s: float, poll_s: float
) -> _Claim:
    """Claim `name`, waiting up to `wait_s`; says who holds it (once, then progress)."""
    started = time.monotonic()
    said: Holder | None = None
    last_said = started
    while True:
        try:
            claim = _claim(engine, name, holder, ttl_s)
        except sa.exc.IntegrityError:
            continue  # lost an insert race: read the winner
        other = claim.busy
        if other is None:
            return claim
        waited = time.monotonic() - started
        if waited >= wait_s:
            raise LeaseBusy(
                f"{name} is being exported by {other.describe()}; waited {waited:.0f} s,"
                " try again when it finishes"
            )
        if said is None or other.holder != said.holder:
            log.warning(
                "waiting for %s: held by %s (waiting up to %.0f s)", name, other.describe(), wait_s
            )
            said, last_said = other, time.monotonic()
        elif time.monotonic() - last_said >= PROGRESS_EVERY_S:
            log.warning("still waiting for %s (%.0f s of %.0f s)", name, waited, wait_s)
            last_said = time.monotonic()
        stoppable_sleep(poll_s)  # a stop signal ends the wait at once


@contextmanager
def lease(
    engine: Engine,
    name: str,
    holder: str,
    wait_s: float,
    ttl_s: float = DEFAULT_TTL_S,
    poll_s: float = 0.2,
) -> Iterator[Held]:
    """Hold `name` for the block, renewed by a heartbeat thread; wait up to `wait_s` for another
    holder, then raise LeaseBusy. Call `check()` on the yielded lease before recording."""
    claim = _wait_for(engine, name, holder, wait_s, ttl_s, poll_s)
    assert claim.token is not None
    stop = threading.Event()
    beat: threading.Thread | None = None
    try:
        held = Held(engine, name, holder, claim.token, ttl_s, claim.took_over, claim.holder_gone)
        beat = threading.Thread(
            target=_heartbeat, args=(held, stop), name=f"lease {name}", daemon=True
        )
        beat.start()
        yield held
    finally:
        # A stop signal arriving now is raised once the lease is released, not half-way.
        with deferred():
            stop.set()
            if beat is not None and beat.ident is not None:  # a stop may land inside start()
                beat.join()
            release(engine, name, holder, claim.token)
