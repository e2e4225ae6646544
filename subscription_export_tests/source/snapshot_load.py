"""The snapshot under load, shared by the suite (5k rows) and `bench/snapshot_load_bench.py`
(200k rows): N existing rows, 4 writer threads updating, deleting and inserting at random, the
snapshot CLI killed with SIGKILL 3 times at random points and then run to the end; afterwards
replaying the change log (snapshot rows and changes, in LSN order) must give exactly the table,
every key, every column. On PostgreSQL `pg_locks` is sampled throughout: no lock held by a
snapshot transaction (on the table, or the sequencer's advisory lock) may outlive one chunk.

`run_under_load` raises AssertionError on any violation and returns the figures."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import engine_for, is_postgres
from subscription_export.core.settings import Settings
from subscription_export.source.demo_table import demo_table_ddl
from subscription_export.source.schema import (
    CaptureSql,
    init_source,
    latest_capture_schema,
    sqlite_row_image,
)
from subscription_export.source.sequencer import sequence
from subscription_export.source.snapshot import APPLICATION_NAME, snapshot_progress
from subscription_export_tests.helpers import now_iso

CLI = [sys.executable, "-m", "subscription_export.cli"]
INSERT = sa.text(
    "INSERT INTO subscriptions (id, user_id, name, category, amount, currency, billing_cycle,"
    " status, next_billing_date, timezone, created_at, updated_at, version) VALUES (:id, 'u1',"
    " 'Plan', 'software', :amount, 'EUR', 'monthly', 'active', '2027-01-31', 'UTC', :ts, :ts, 1)"
)
# The same rows as INSERT with key f"k{n:06d}" and amount f"{n % 97}.25", made by the server
# (200k client-side inserts would dominate the benchmark).
_FILL = {
    "postgresql": "INSERT INTO subscriptions SELECT"
    " 'k' || lpad(g::text, greatest(6, length(g::text)), '0'), 'u1', 'Plan', 'software',"
    " CAST((g % 97) || '.25' AS numeric), 'EUR', 'monthly', 'active', DATE '2027-01-31', 'UTC',"
    " CAST(:ts AS timestamptz), CAST(:ts AS timestamptz), 1 FROM generate_series(0, :rows - 1) g",
    "sqlite": "WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n + 1 < :rows)"
    " INSERT INTO subscriptions SELECT printf('k%06d', n), 'u1', 'Plan', 'software',"
    " (n % 97) || '.25', 'EUR', 'monthly', 'active', '2027-01-31', 'UTC', :ts, :ts, 1 FROM g",
}


def app_table(url: str, rows: int) -> Engine:
    """The application's table with `rows` rows (keys k000000…), before any capture exists."""
    engine = engine_for(url, writer=True)
    with engine.begin() as conn:
        conn.exec_driver_sql(demo_table_ddl(is_postgres(engine)))
        if rows:
            conn.execute(sa.text(_FILL[engine.dialect.name]), {"rows": rows, "ts": now_iso()})
    return engine


def replayed(engine: Engine) -> dict[str, dict[str, Any]]:
    """The change log in LSN order, last image per key (a delete removes the key)."""
    sequence(engine)
    state: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        unsequenced = conn.execute(
            sa.text("SELECT COUNT(*) FROM subscription_change_log WHERE lsn IS NULL")
        ).scalar_one()
        assert unsequenced == 0
        rows = conn.execute(
            sa.text(
                "SELECT subscription_id, op, CAST(after AS TEXT) FROM subscription_change_log"
                " ORDER BY lsn"
            )
        )
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


def replay_mismatches(engine: Engine) -> list[str]:
    """Keys whose replayed image differs from the table (missing on either side included)."""
    replay, table = replayed(engine), table_images(engine)
    return sorted(k for k in replay.keys() | table.keys() if replay.get(k) != table.get(k))


def count_r(engine: Engine) -> int:
    with engine.connect() as conn:
        query = "SELECT COUNT(*) FROM subscription_change_log WHERE op = 'r'"
        return int(conn.execute(sa.text(query)).scalar_one())


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
                        conn.execute(INSERT, {"id": new, "amount": "1.00", "ts": now_iso()})
                self.done[i] += 1
                time.sleep(0.001)
        except BaseException as exc:  # reported by __exit__
            self.errors.append(exc)


class LockSampler:
    """Samples pg_locks: which snapshot transaction holds a lock on `subscriptions` or an
    advisory lock (the sequencer's), and which chunk (1-based) it was running then."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.samples: list[tuple[int, str, int]] = []  # (pid, xact_start, chunk it runs)
        self.detail: list[tuple[Any, ...]] = []
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
            "SELECT a.pid, CAST(a.xact_start AS TEXT), CAST(a.backend_xid AS TEXT),"
            " l.locktype, l.mode"
            " FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid"
            # pg_locks and pg_stat_activity list the whole cluster: another database's
            # snapshot (a parallel test worker's, a second checkout's) is not this one's.
            " WHERE a.application_name = :n AND a.datname = current_database()"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND l.granted AND (l.locktype = 'advisory'"
            " OR (l.locktype = 'relation' AND l.relation = CAST('subscriptions' AS regclass)))"
        )
        chunks = sa.text("SELECT chunks_done FROM subscription_snapshot_progress")
        with self.engine.connect() as conn:
            conn.execute(sa.text("SET application_name = 'lock-sampler'"))
            while not self.stop.is_set():
                # pg_locks is read live, not from the statement's snapshot: read the progress
                # before and after, and keep the sample only if no chunk committed in between
                # (else a holder could be paired with its predecessor's count).
                before = conn.execute(chunks).scalar()
                conn.commit()
                rows = conn.execute(locks, {"n": APPLICATION_NAME}).all()
                conn.commit()
                after = conn.execute(chunks).scalar()
                conn.commit()
                if before is None or before != after:
                    continue
                # A chunk has its xid from its first statement (the progress row FOR UPDATE)
                # on, before it takes any of these locks. PostgreSQL clears the xid when the
                # commit (or abort) becomes visible and releases the locks a moment later, so
                # a holder without an xid has ended: its count is the one it committed. One
                # with an xid is running chunk `before + 1`.
                self.samples += [(int(p), str(x), int(before) + 1) for p, x, xid, *_ in rows if xid]
                self.detail += [(before, *r) for r in rows]
                time.sleep(0.002)

    def spanning(self) -> tuple[int, dict[tuple[int, str], set[int]]]:
        """(snapshot transactions seen, those seen running more than one chunk)."""
        by_transaction: dict[tuple[int, str], set[int]] = {}
        for pid, started, chunks in self.samples:
            by_transaction.setdefault((pid, started), set()).add(chunks)
        return len(by_transaction), {k: v for k, v in by_transaction.items() if len(v) > 1}


def _snapshot_process(settings: Settings, workdir: Path, chunk: int) -> subprocess.Popen[str]:
    env = {**os.environ, "DAGSTER_HOME": str(workdir / "dh"), **settings.as_env()}
    return subprocess.Popen(
        [*CLI, "snapshot", "--chunk-size", str(chunk), "--json"],
        env=env,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_at_random(
    engine: Engine, settings: Settings, workdir: Path, chunk: int, rng: random.Random, most: int
) -> int:
    """Start the snapshot CLI, SIGKILL it once it has committed 1..`most` more chunks (plus a
    random few ms, so mid-chunk too), check nothing but whole chunks stayed; chunks done."""
    # A reader (never BEGIN IMMEDIATE on SQLite): polling must not queue for the write lock
    # behind the writers and the chunk, or a fast snapshot finishes before the kill lands.
    reader = engine_for(settings.source_url)
    before = snapshot_progress(reader)
    assert before is not None
    goal = before.chunks_done + rng.randrange(1, most + 1)
    proc = _snapshot_process(settings, workdir, chunk)
    while (now := snapshot_progress(reader)) and now.chunks_done < goal:
        assert proc.poll() is None, proc.communicate()
        time.sleep(rng.random() * 0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = snapshot_progress(engine)
    assert after is not None and not after.finished, (after, goal, proc.returncode)
    # Exactly the committed chunks: their rows and their progress, nothing else.
    assert count_r(engine) == after.rows_done, (count_r(engine), after)
    return after.chunks_done


def run_under_load(
    url: str, rows: int, chunk: int, workdir: Path, seed: int = 13
) -> dict[str, Any]:
    """The whole scenario on the source at `url` (an empty schema or file); its figures."""
    engine = app_table(url, rows)
    init_source(engine)
    progress = snapshot_progress(engine)
    assert progress is not None and not progress.finished and progress.rows_done == 0, progress
    settings = Settings(
        source_url=url,
        state_url=f"sqlite:///{workdir / 'state.db'}",
        export_dir=workdir / "exports",
    )
    rng = random.Random(seed)
    most = max(1, math.ceil(rows / chunk) // 5)  # 3 kills land within the first 60% of chunks
    sampler = LockSampler(engine_for(url, writer=True)) if is_postgres(engine) else None
    started = time.perf_counter()
    with Writers(engine, rows + rows // 10, seed=seed + 1) as writers:
        if sampler:
            sampler.__enter__()
        try:
            kills = [_kill_at_random(engine, settings, workdir, chunk, rng, most) for _ in "123"]
            proc = _snapshot_process(settings, workdir, chunk)
            out, err = proc.communicate(timeout=1800)
            assert proc.returncode == 0, out + err
        finally:
            if sampler:
                sampler.__exit__()
        snapshot_s = time.perf_counter() - started
        time.sleep(0.2)  # writers keep going after the snapshot finished
    result = json.loads(out)
    assert result["finished"] and result["resumed_after_rows"] > 0, result
    assert len(kills) == 3 and kills == sorted(kills), kills
    assert count_r(engine) == result["rows_done"]
    mismatches = replay_mismatches(engine)
    assert not mismatches, (len(mismatches), mismatches[:10])
    figures: dict[str, Any] = {
        "database": engine.dialect.name,
        "rows": rows,
        "chunk_size": chunk,
        "killed_after_chunks": kills,
        "chunks": result["chunks_done"],
        "r_rows": result["rows_done"],
        "writer_changes": sum(writers.done),
        "snapshot_s_with_kills": round(snapshot_s, 2),
        "keys_checked": len(table_images(engine)),
        "replay_mismatches": 0,
    }
    if sampler:
        seen, spanning = sampler.spanning()
        assert seen >= 3, sampler.samples[:20]  # the sampler saw chunks
        # No snapshot transaction held a lock while a chunk committed.
        assert not spanning, (
            spanning,
            sorted({(d[0], d[3], d[4]) for d in sampler.detail if (d[1], d[2]) in spanning}),
        )
        figures |= {"lock_samples": len(sampler.samples), "snapshot_transactions_seen": seen}
    return figures
