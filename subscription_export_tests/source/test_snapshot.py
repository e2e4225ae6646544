"""The online snapshot on real SQLite and PostgreSQL: correctness under concurrent writers and
SIGKILLs, lock scope (pg_locks sampling), resume, re-snapshot and the change-log upgrade."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.db import is_postgres
from subscription_export.source.schema import init_source
from subscription_export.source.sequencer import sequence
from subscription_export.source.snapshot import (
    restart_snapshot,
    run_snapshot,
    snapshot_progress,
)
from subscription_export_tests.helpers import now_iso, writer
from subscription_export_tests.source.snapshot_load import (
    INSERT,
    app_table,
    count_r,
    replayed,
    run_under_load,
    table_images,
)

_INSERT = INSERT


@pytest.mark.parametrize(
    ("keys", "chunk"),
    [
        pytest.param(5_000, 25, id="5k-small-chunks"),  # many chunks: writers meet each often
        pytest.param(200_000, 2048, id="200k"),  # the acceptance's size
    ],
)
def test_snapshot_under_load_with_three_kills_replays_to_the_table(
    source_url: str, tmp_path: Path, keys: int, chunk: int
) -> None:
    """The acceptance's scenario (`bench/snapshot_load_bench.py` runs the same checker):
    4 random writers, 3 SIGKILLs, replay == table, no snapshot lock outlives a chunk."""
    figures = run_under_load(source_url, keys, chunk, tmp_path)
    assert figures["writer_changes"] > 200 and figures["replay_mismatches"] == 0
    assert figures["keys_checked"] > keys // 2


def test_a_chunk_passes_an_uncommitted_change_which_then_follows_it(pg_url: str) -> None:
    """A change in flight on a row of the chunk: the chunk takes no row lock, so it neither
    waits nor blocks; it reads the committed image, its `r` rows get their LSNs at once, and
    the change, committed later, is numbered after them. A change committed before the chunk
    (and still waiting for the sequencer) is numbered before the chunk's rows."""
    engine = app_table(pg_url, 10)
    init_source(engine)
    with engine.begin() as conn:  # committed, not yet numbered
        conn.execute(sa.text("UPDATE subscriptions SET amount = 11 WHERE id = 'k000001'"))
    with writer(pg_url).connect() as app:
        txn = app.begin()
        app.execute(
            sa.text("UPDATE subscriptions SET amount = 77, version = 2 WHERE id = 'k000002'")
        )
        done = run_snapshot(engine, "subscriptions", 4)  # would wait forever on a row lock
        assert done.finished and done.rows_done == 10
        txn.commit()
    assert replayed(engine) == table_images(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT subscription_id, op, CAST(after AS TEXT) FROM subscription_change_log"
                " WHERE subscription_id IN ('k000001', 'k000002') ORDER BY lsn"
            )
        ).all()
    assert [(key, op) for key, op, _ in rows] == [
        ("k000001", "u"),
        ("k000001", "r"),
        ("k000002", "r"),
        ("k000002", "u"),
    ]
    assert json.loads(rows[2][2])["amount"] != 77 and json.loads(rows[3][2])["amount"] == 77


def test_init_records_no_snapshot_for_an_empty_table_and_resumes_a_pending_one(
    source_url: str,
) -> None:
    empty = app_table(source_url, 0)
    init_source(empty)
    first = snapshot_progress(empty)
    assert first is not None and first.finished and first.rows_done == 0
    with empty.begin() as conn:
        conn.execute(_INSERT, {"id": "later", "amount": "2.00", "ts": now_iso()})
    init_source(empty)  # re-init (e.g. after ALTER TABLE): captured rows need no snapshot
    assert snapshot_progress(empty) == first and count_r(empty) == 0

    restart_snapshot(empty)  # an operator re-snapshot: every row again, as op 'r'
    done = run_snapshot(empty, chunk_size=1)
    assert done.finished and done.rows_done == 1 and count_r(empty) == 1
    assert replayed(empty) == table_images(empty)


def test_partial_snapshot_resumes_exactly_after_its_last_chunk(source_url: str) -> None:
    engine = app_table(source_url, 50)
    init_source(engine)
    part = run_snapshot(engine, chunk_size=7, max_chunks=3)
    assert (part.rows_done, part.chunks_done, part.last_key, part.finished) == (
        21,
        3,
        '["k000020"]',  # the last key done, as a JSON array (composite keys have several)
        False,
    )
    init_source(engine)  # re-running init keeps the partial progress
    rest = run_snapshot(engine, chunk_size=7)
    assert rest.finished and rest.rows_done == 50 and count_r(engine) == 50
    assert replayed(engine) == table_images(engine)


_OLD_LOG = {  # the change log as main created it before snapshots existed
    "sqlite": """CREATE TABLE subscription_change_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT, lsn INTEGER UNIQUE,
        op TEXT NOT NULL CHECK (op IN ('c', 'u', 'd')), subscription_id TEXT NOT NULL,
        before TEXT, after TEXT, changed_at TEXT NOT NULL,
        origin TEXT NOT NULL DEFAULT 'app', schema_version INTEGER NOT NULL)""",
    "postgresql": """CREATE TABLE subscription_change_log (
        id bigserial PRIMARY KEY, lsn bigint UNIQUE,
        txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        op char(1) NOT NULL CHECK (op IN ('c', 'u', 'd')), subscription_id text NOT NULL,
        before jsonb, after jsonb, changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        origin text NOT NULL DEFAULT 'app', schema_version integer NOT NULL)""",
}


def test_init_upgrades_an_existing_change_log_to_accept_snapshot_rows(source_url: str) -> None:
    engine = app_table(source_url, 0)
    with engine.begin() as conn:
        conn.exec_driver_sql(_OLD_LOG[engine.dialect.name])
        for n in range(1, 4):
            conn.execute(
                sa.text(
                    "INSERT INTO subscription_change_log (id, lsn, op, subscription_id, after,"
                    " changed_at, schema_version) VALUES (:n, :n, 'c', :k, '{}', :t, 1)"
                ),
                {"n": n * 10, "k": f"old{n}", "t": now_iso()},
            )
        # The last row was deleted: its id must not come back.
        if is_postgres(engine):
            conn.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('subscription_change_log', 'id'), 40)"
            )
        else:
            conn.exec_driver_sql("UPDATE sqlite_sequence SET seq = 40")
        conn.execute(_INSERT, {"id": "k1", "amount": "5.00", "ts": now_iso()})  # uncaptured
    init_source(engine)
    run_snapshot(engine)
    with engine.begin() as conn:
        conn.execute(_INSERT, {"id": "k2", "amount": "6.00", "ts": now_iso()})
    sequence(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, lsn, op, subscription_id FROM subscription_change_log ORDER BY lsn")
        ).all()
    assert [tuple(r)[1:] for r in rows] == [
        (10, "c", "old1"),
        (20, "c", "old2"),
        (30, "c", "old3"),
        (31, "r", "k1"),
        (32, "c", "k2"),
    ]
    assert [r[0] for r in rows[:3]] == [10, 20, 30]
    assert rows[3][0] == 41  # ids continue after the old log's counter
    with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(
            sa.text(
                "INSERT INTO subscription_change_log (lsn, op, subscription_id, changed_at,"
                " schema_version) VALUES (99, 'x', 'k', '2026-01-01T00:00:00Z', 1)"
            )
        )
