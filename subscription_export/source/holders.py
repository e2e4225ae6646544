"""Who holds changes back: the backends an operator has to look at when exports stall.

Only transactions that touch the change log matter (docs/architecture.md, "LSN sequencing on
PostgreSQL"); they show up in `pg_locks` as holders of a lock on `subscription_change_log` or
of the sequencer's advisory lock:

* a writer (ROW EXCLUSIVE on the log) has changes that are not committed yet; they are exported
  once it commits and delay nobody else's;
* a lock that conflicts with the sequencer's UPDATE (SHARE and stronger: DDL, `LOCK TABLE`,
  `CREATE INDEX`) or a sequencer stuck holding the advisory lock stops numbering for everyone.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import is_postgres

SEQUENCER_LOCK = "subscription_export.sequencer"  # key of the sequencer's advisory lock

UNCOMMITTED = "uncommitted changes"  # a writer: holds back only its own changes
BLOCKS_SEQUENCER = "blocks the sequencer"  # holds back every change

# A bigint advisory key is shown split in two: high half in classid, low half in objid.
_HOLDERS_PG = sa.text(
    """
    SELECT l.pid, d.datname, l.locktype, l.mode,
           EXTRACT(EPOCH FROM clock_timestamp() - a.xact_start)::float8 AS age_s, a.state
    FROM pg_locks l
    JOIN pg_database d ON d.oid = l.database
    LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.granted AND l.pid <> pg_backend_pid() AND d.datname = current_database()
      AND (
        (l.locktype = 'relation' AND l.relation = 'subscription_change_log'::regclass
         AND l.mode IN ('RowExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock',
                        'ExclusiveLock', 'AccessExclusiveLock'))
        OR (l.locktype = 'advisory' AND l.objsubid = 1
            AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext(:key)::bigint)
      )
    ORDER BY a.xact_start NULLS LAST, l.pid
    """
)


@dataclass(frozen=True)
class Holder:
    pid: int
    database: str
    age_s: float | None  # how long its transaction has been open; None if not ours to see
    state: str | None  # pg_stat_activity.state, e.g. "idle in transaction"
    lock: str  # e.g. "RowExclusiveLock" or "advisory"
    effect: str  # UNCOMMITTED or BLOCKS_SEQUENCER

    def describe(self) -> str:
        age = "?" if self.age_s is None else f"{self.age_s:.0f}"
        return (
            f"pid {self.pid} (database {self.database}, transaction open {age} s,"
            f" {self.state or 'state unknown'}, {self.lock}): {self.effect}"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "database": self.database,
            "age_s": self.age_s,
            "state": self.state,
            "lock": self.lock,
            "effect": self.effect,
        }


def change_log_holders(engine: Engine) -> list[Holder]:
    """Other backends holding changes back, oldest transaction first; empty on SQLite."""
    if not is_postgres(engine):
        return []
    with engine.connect() as conn:
        rows = conn.execute(_HOLDERS_PG, {"key": SEQUENCER_LOCK}).all()
    holders: dict[int, Holder] = {}
    for pid, database, locktype, mode, age_s, state in rows:
        lock = "advisory" if locktype == "advisory" else str(mode)
        effect = UNCOMMITTED if lock == "RowExclusiveLock" else BLOCKS_SEQUENCER
        if pid in holders and holders[pid].effect == BLOCKS_SEQUENCER:
            continue  # one line per backend, naming what stops everyone when it does both
        holders[pid] = Holder(pid, database, age_s, state, lock, effect)
    return list(holders.values())
