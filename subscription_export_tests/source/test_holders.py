"""Who holds changes back: named by pid, database and age, so `run` and `status` can say it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from subscription_export.source.demo_table import init_demo_source
from subscription_export.source.holders import (
    BLOCKS_SEQUENCER,
    SEQUENCER_LOCK,
    UNCOMMITTED,
    Holder,
    change_log_holders,
)
from subscription_export.source.sequencer import sequence
from subscription_export_tests.helpers import insert, writer

pytestmark = pytest.mark.integration

_BLOCKERS = {
    "advisory": f"SELECT pg_advisory_xact_lock(hashtext('{SEQUENCER_LOCK}'))",  # a stuck sequencer
    "ShareLock": "LOCK TABLE subscription_change_log IN SHARE MODE",  # e.g. CREATE INDEX
}


@pytest.mark.parametrize("lock", sorted(_BLOCKERS))
def test_a_held_sequencer_names_the_holder_then_catches_up(pg_url: str, lock: str) -> None:
    engine = writer(pg_url)
    init_demo_source(engine)
    with engine.begin() as conn:
        insert(conn, "s1")
    with engine.connect() as blocker:
        blocker_pid = blocker.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        blocker.execute(sa.text(_BLOCKERS[lock]))

        held = sequence(engine, wait_s=0.2)

        assert (held.numbered, held.last_lsn, held.waiting) == (0, 0, 1)
        # (other sources sharing the database could be named too; ours must be)
        [holder] = [h for h in held.held_by if h.pid == blocker_pid]
        assert (holder.pid, holder.database, holder.lock, holder.effect) == (
            blocker_pid,
            engine.url.database,
            lock,
            BLOCKS_SEQUENCER,
        )
        assert holder.age_s is not None and holder.age_s >= 0
        assert f"pid {blocker_pid} (database {engine.url.database}" in holder.describe()
        blocker.rollback()
    caught_up = sequence(engine, wait_s=10.0)
    assert (caught_up.numbered, caught_up.last_lsn, caught_up.waiting) == (1, 1, 0)
    assert caught_up.held_by == ()


def _table_lock_holders(engine: sa.Engine) -> list[Holder]:
    """Holders of locks on this schema's change log (the advisory lock is database-wide)."""
    return [h for h in change_log_holders(engine) if h.lock != "advisory"]


def test_a_writer_holds_back_only_its_own_uncommitted_changes(pg_url: str) -> None:
    engine = writer(pg_url)
    init_demo_source(engine)
    assert _table_lock_holders(engine) == []
    with engine.connect() as open_writer:
        writer_pid = open_writer.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        insert(open_writer, "uncommitted")
        with engine.begin() as conn:
            insert(conn, "committed")
        assert [(h.pid, h.lock, h.effect) for h in _table_lock_holders(engine)] == [
            (writer_pid, "RowExclusiveLock", UNCOMMITTED)
        ]
        result = sequence(engine, wait_s=10.0)
        assert (result.numbered, result.waiting, result.held_by) == (1, 0, ())
        open_writer.rollback()
    assert _table_lock_holders(engine) == []


def test_sqlite_has_no_holders(sqlite_url: str) -> None:
    engine = writer(sqlite_url)
    init_demo_source(engine)
    assert change_log_holders(engine) == []
