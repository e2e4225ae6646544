"""Invariant 1, last clause: a transaction that does not write the change log - in another
database of the server or in the source database - delays no export.

Each open transaction here takes an xid and so holds PostgreSQL's cluster-wide read horizon
(`pg_snapshot_xmin`) for longer than a cycle waits; the tests check that it really does, then
that the change committed meanwhile is exported by the very next cycle.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_canonical, finish
from subscription_export.runtime import Project
from subscription_export.source.demo_table import init_demo_source
from subscription_export.source.holders import change_log_holders
from subscription_export_tests.conftest import PG_DSN
from subscription_export_tests.helpers import insert, read_exported, writer
from subscription_export_tests.source.test_read_horizon import _settings

pytestmark = pytest.mark.integration


def _open_write_transaction(conninfo: str) -> Iterator[int]:
    """A write transaction (temp table + insert: it has an xid) held open; yields its xid."""
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        conn.execute("CREATE TEMP TABLE unrelated_work (x int)")
        conn.execute("INSERT INTO unrelated_work VALUES (1)")
        xid = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert xid is not None
        yield int(xid[0])
        conn.rollback()


@pytest.fixture
def other_database_transaction() -> Iterator[int]:
    yield from _open_write_transaction(psycopg.conninfo.make_conninfo(PG_DSN, dbname="postgres"))


@pytest.fixture
def same_database_transaction(pg_database: str) -> Iterator[int]:
    yield from _open_write_transaction(PG_DSN)


def _holds_the_cluster_horizon(engine: sa.Engine, xid: int) -> bool:
    with engine.connect() as conn:
        xmin = conn.execute(
            sa.text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        ).scalar_one()
    return int(xmin) <= xid


def _assert_next_cycle_exports(pg_url: str, tmp_path: Path, xid: int) -> None:
    engine = writer(pg_url)
    init_demo_source(engine)
    project = Project(_settings(pg_url, tmp_path))
    with engine.begin() as conn:
        insert(conn, "s1")
    assert _holds_the_cluster_horizon(engine, xid)  # the old sequencer would wait behind it

    cut = cut_windows(project)  # one cycle: sequence, cut, export
    assert (cut.sequenced.numbered, cut.sequenced.waiting, cut.sequenced.held_by) == (1, 0, ())
    for window in cut.new_windows:
        finish(project, export_canonical(project, window))

    table = read_exported(project.settings.export_dir / "subscription_changes")
    assert table.column("id").to_pylist() == ["s1"]
    assert table.column("_lsn").to_pylist() == [1]
    # It never wrote the change log (the advisory lock may be another schema's sequencer).
    assert [h for h in change_log_holders(engine) if h.lock != "advisory"] == []
    assert _holds_the_cluster_horizon(engine, xid)  # still open after the cycle


def test_transaction_in_another_database_delays_no_export(
    pg_url: str,
    tmp_path: Path,
    other_database_transaction: int,
) -> None:
    _assert_next_cycle_exports(pg_url, tmp_path, other_database_transaction)


def test_transaction_on_other_tables_of_the_source_delays_no_export(
    pg_url: str,
    tmp_path: Path,
    same_database_transaction: int,
) -> None:
    _assert_next_cycle_exports(pg_url, tmp_path, same_database_transaction)
