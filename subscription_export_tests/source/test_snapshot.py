"""The online snapshot on real SQLite and PostgreSQL: correctness under concurrent writers and
SIGKILLs, lock scope (pg_locks sampling), resume, re-snapshot and the change-log upgrade."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import is_postgres
from subscription_export.core.settings import Settings
from subscription_export.source.demo_table import demo_table_ddl
from subscription_export.source.schema import (
    CaptureSql,
    init_source,
    latest_capture_schema,
    sqlite_row_image,
)
from subscription_export.source.sequencer import sequence
from subscription_export.source.snapshot import (
    APPLICATION_NAME,
    restart_snapshot,
    run_snapshot,
    snapshot_progress,
)
from subscription_export_tests.helpers import now_iso, writer

CLI = [sys.executable, "-m", "subscription_export.cli"]
_INSERT = sa.text(
    "INSERT INTO subscriptions (id, user_id, name, category, amount, currency, billing_cycle,"
    " status, next_billing_date, timezone, created_at, updated_at, version) VALUES (:id, 'u1',"
    " 'Plan', 'software', :amount, 'EUR', 'monthly', 'active', '2027-01-31', 'UTC', :ts, :ts, 1)"
)


def app_table(url: str, rows: int, prefix: str = "k") -> Engine:
    """The application's table with `rows` rows, before any capture exists."""
    engine = writer(url)
    ts = now_iso()
    with engine.begin() as conn:
        conn.exec_driver_sql(demo_table_ddl(is_postgres(engine)))
        if rows:
            conn.execute(
                _INSERT,
                [
                    {"id": f"{prefix}{n:06d}", "amount": f"{n % 97}.25", "ts": ts}
                    for n in range(rows)
                ],
            )
    return engine


def replayed(engine: Engine) -> dict[str, dict[str, Any]]:
    """The change log in LSN order, last image per key (a delete removes the key)."""
    sequence(engine)
    state: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT subscription_id, op, CAST(after AS TEXT) FROM subscription_change_log"
                " ORDER BY lsn"
            )
        ).all()
        unsequenced = conn.execute(
            sa.text("SELECT COUNT(*) FROM subscription_change_log WHERE lsn IS NULL")
        ).scalar_one()
    assert unsequenced == 0
    for key, op, after in rows:
        if op == "d":
            state.pop(key, None)
        else:
            state[key] = json.loads(after)
    return state


def table_images(engine: Engine) -> dict[str, dict[str, Any]]:
    """Each row of the table as the capture would image it now."""
    with engine.connect() as conn:
        if is_postgres(engine):
            query = "SELECT s.id, CAST(to_jsonb(s) AS TEXT) FROM subscriptions AS s"
        else:
            schema = latest_capture_schema(conn)
            assert schema is not None
            image = sqlite_row_image(schema.columns, "s", CaptureSql(conn.dialect))
            query = f"SELECT s.id, {image} FROM subscriptions AS s"
        return {key: json.loads(text) for key, text in conn.exec_driver_sql(query)}


def count_r(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT COUNT(*) FROM subscription_change_log WHERE op = 'r'")
            ).scalar_one()
        )


class Writers:
    """Four application threads updating, deleting and inserting at random until stopped."""

    def __init__(self, engine: Engine, keys: int, seed: int) -> None:
        self.engine, self.keys, self.seed = engine, keys, seed
        self.stop = threading.Event()
        self.done = [0] * 4
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(4)]

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        assert not self.errors, self.errors

    def _run(self, i: int) -> None:
        rng = random.Random(self.seed + i)
        try:
            while not self.stop.is_set():
                key = f"k{rng.randrange(self.keys):06d}"
                action = rng.random()
                with self.engine.begin() as conn:
                    if action < 0.6:
                        conn.execute(
                            sa.text(
                                "UPDATE subscriptions SET amount = :a, version = version + 1"
                                " WHERE id = :id"
                            ),
                            {"a": f"{rng.randrange(1, 999)}.50", "id": key},
                        )
                    elif action < 0.8:
                        conn.execute(
                            sa.text("DELETE FROM subscriptions WHERE id = :id"), {"id": key}
                        )
                    else:  # a new key between existing ones, behind or ahead of the snapshot
                        new = f"{key}-w{i}-{self.done[i]}"
                        conn.execute(_INSERT, {"id": new, "amount": "1.00", "ts": now_iso()})
                self.done[i] += 1
                time.sleep(0.001)
        except BaseException as exc:  # reported by __exit__
            self.errors.append(exc)


class LockSampler:
    """Samples pg_locks: which snapshot transaction holds a lock on `subscriptions`, and how
    many chunks were committed at that moment."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.samples: list[tuple[int, str, int]] = []  # (pid, xact_start, chunks committed)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def __enter__(self) -> LockSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        locks = sa.text(
            "SELECT a.pid, CAST(a.xact_start AS TEXT)"
            " FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid"
            " WHERE a.application_name = :n AND l.locktype = 'relation'"
            " AND l.relation = CAST('subscriptions' AS regclass)"
        )
        chunks = sa.text("SELECT chunks_done FROM subscription_snapshot_progress")
        with self.engine.connect() as conn:
            conn.execute(sa.text("SET application_name = 'lock-sampler'"))
            while not self.stop.is_set():
                # pg_locks is read live, not from the statement's snapshot: count the chunks
                # before and after, and keep the sample only if no chunk committed in between
                # (else a holder could be paired with its predecessor's count).
                before = conn.execute(chunks).scalar()
                conn.commit()
                rows = conn.execute(locks, {"n": APPLICATION_NAME}).all()
                conn.commit()
                after = conn.execute(chunks).scalar()
                conn.commit()
                if before is not None and before == after:
                    self.samples += [(int(p), str(x), int(before)) for p, x in rows]
                time.sleep(0.002)


def _snapshot_process(settings: Settings, tmp_path: Path, chunk: int) -> subprocess.Popen[str]:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), **settings.as_env()}
    return subprocess.Popen(
        [*CLI, "snapshot", "--chunk-size", str(chunk), "--json"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _settings(url: str, tmp_path: Path) -> Settings:
    return Settings(
        source_url=url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
    )


KEYS = 5_000
CHUNK = 25


def test_snapshot_under_load_with_three_kills_replays_to_the_table(
    source_url: str, tmp_path: Path
) -> None:
    engine = app_table(source_url, KEYS)
    init_source(engine)
    progress = snapshot_progress(engine)
    assert progress is not None and not progress.finished and progress.rows_done == 0
    settings = _settings(source_url, tmp_path)
    rng = random.Random(13)
    sampler = LockSampler(writer(source_url)) if is_postgres(engine) else None
    kills = []
    with Writers(engine, KEYS + KEYS // 10, seed=7) as writers:
        if sampler:
            sampler.__enter__()
        try:
            for _ in range(3):  # SIGKILL once the run has committed a random number of chunks
                before = snapshot_progress(engine)
                assert before is not None
                goal = before.chunks_done + rng.randrange(3, 25)
                proc = _snapshot_process(settings, tmp_path, CHUNK)
                while (now := snapshot_progress(engine)) and now.chunks_done < goal:
                    assert proc.poll() is None, proc.communicate()
                    time.sleep(rng.random() * 0.01)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                after = snapshot_progress(engine)
                assert after is not None and not after.finished
                # Exactly the committed chunks: their rows and their progress, nothing else.
                assert count_r(engine) == after.rows_done
                kills.append(after.chunks_done)
            proc = _snapshot_process(settings, tmp_path, CHUNK)
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, out + err
        finally:
            if sampler:
                sampler.__exit__()
        time.sleep(0.2)  # writers keep going after the snapshot finished
    result = json.loads(out)
    assert result["finished"] and result["resumed_after_rows"] > 0
    assert len(kills) == 3 and kills == sorted(kills)
    assert sum(writers.done) > 200
    assert count_r(engine) == result["rows_done"]
    assert replayed(engine) == table_images(engine)  # every key, every column
    if sampler:
        by_transaction: dict[tuple[int, str], set[int]] = {}
        for pid, started, chunks in sampler.samples:
            by_transaction.setdefault((pid, started), set()).add(chunks)
        assert len(by_transaction) >= 3, sampler.samples[:20]  # the sampler saw chunks
        # No snapshot transaction held a lock on the table while a chunk committed.
        spanning = {k: v for k, v in by_transaction.items() if len(v) > 1}
        assert not spanning, spanning


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
