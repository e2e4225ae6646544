"""Invariant 1: gap-free LSNs in commit order; a late commit is never skipped."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_canonical, finish
from subscription_export.runtime import Project
from subscription_export.source.demo_table import init_demo_source
from subscription_export.source.holders import UNCOMMITTED, change_log_holders
from subscription_export_tests.helpers import insert, read_exported, update, writer

pytestmark = pytest.mark.integration


def _settings(source_url: str, tmp_path: Path) -> Settings:
    return Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_changes=10_000,
        window_max_age_s=0.0,
    )


def export_once(project: Project) -> None:
    """What `run --once` does, without Dagster: cut due windows and export them."""
    for window in cut_windows(project).new_windows:
        finish(project, export_canonical(project, window))


def naive_serial_export(engine: sa.Engine, after_id: int) -> tuple[list[str], int]:
    """The broken design: treat the serial `id` as the LSN and read past the last seen id."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, subscription_id FROM subscription_change_log WHERE id > :after"
                " ORDER BY id"
            ),
            {"after": after_id},
        ).all()
    return [r[1] for r in rows], (rows[-1][0] if rows else after_id)


def test_open_transaction_holds_back_only_its_own_change_pg(pg_url: str, tmp_path: Path) -> None:
    # T1 stays open on purpose, across a whole cycle.
    engine = writer(pg_url)
    init_demo_source(engine)
    project = Project(_settings(pg_url, tmp_path))
    with engine.begin() as conn:
        insert(conn, "s0")
    t1 = engine.connect()
    try:
        t1_tx = t1.begin()
        insert(t1, "t1")  # T1 writes first (lower log id) and stays open
        with engine.begin() as conn:
            insert(conn, "t2")  # T2 writes later and commits first
        seen_naive, last_id = naive_serial_export(engine, 0)

        export_once(project)
        first = read_exported(project.settings.export_dir / "subscription_changes")
        assert first.column("id").to_pylist() == ["s0", "t2"]  # T2 does not wait for T1
        holders = [h for h in change_log_holders(engine) if h.lock != "advisory"]
        assert [h.effect for h in holders] == [UNCOMMITTED]

        t1_tx.commit()
    finally:
        t1.close()
    export_once(project)
    table = read_exported(project.settings.export_dir / "subscription_changes")
    assert table.column("id").to_pylist() == ["s0", "t2", "t1"]  # T1 numbered when visible
    assert table.column("_lsn").to_pylist() == [1, 2, 3]

    # The same interleaving with a plain serial column loses T1's change for good.
    more, _ = naive_serial_export(engine, last_id)
    assert sorted(seen_naive) == ["s0", "t2"] and more == []
    assert "t1" not in seen_naive + more


def test_sqlite_single_writer_reader_sees_only_committed(sqlite_url: str, tmp_path: Path) -> None:
    engine = writer(sqlite_url)
    init_demo_source(engine)
    project = Project(_settings(sqlite_url, tmp_path))
    with engine.begin() as conn:
        insert(conn, "s0")
    t1 = engine.connect()
    t1_tx = t1.begin()
    insert(t1, "t1")  # holds SQLite's write lock; other writers wait for it
    export_once(project)
    assert read_exported(project.settings.export_dir / "subscription_changes").num_rows == 1
    t1_tx.commit()
    t1.close()
    with engine.begin() as conn:
        insert(conn, "t2")
    export_once(project)
    table = read_exported(project.settings.export_dir / "subscription_changes")
    assert table.column("id").to_pylist() == ["s0", "t1", "t2"]
    assert table.column("_lsn").to_pylist() == [1, 2, 3]


def _writer_thread(
    url: str, worker: int, count: int, seed: int, committed: list, lock: threading.Lock
) -> None:
    import random
    import time

    rng = random.Random(seed * 1000 + worker)
    engine = writer(url)
    for i in range(count):
        sub_id = f"w{worker}-{i % 5}"  # few ids per worker: updates pile up on the same rows
        with engine.connect() as conn:
            tx = conn.begin()
            exists = conn.execute(
                sa.text("SELECT version FROM subscriptions WHERE id = :id"), {"id": sub_id}
            ).scalar()
            if exists is None:
                insert(conn, sub_id, amount=f"{i}.00")
            else:
                conn.execute(
                    sa.text(
                        "UPDATE subscriptions SET amount = :a, version = version + 1 WHERE id = :id"
                    ),
                    {"a": f"{i}.00", "id": sub_id},
                )
            time.sleep(rng.uniform(0, 0.05))  # between the write and the commit
            if rng.random() < 0.1:
                tx.rollback()
                continue
            with lock:
                tx.commit()
                committed.append((sub_id, f"{i}.00"))


def test_concurrent_writers_exported_exactly_once_in_commit_order(
    pg_url: str, tmp_path: Path
) -> None:
    engine = writer(pg_url)
    init_demo_source(engine)
    project = Project(_settings(pg_url, tmp_path))
    committed: list[tuple[str, str]] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_writer_thread, args=(pg_url, w, 40, 1, committed, lock))
        for w in range(8)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        export_once(project)  # the exporter keeps running while writers commit
    for t in threads:
        t.join()
    export_once(project)

    table = read_exported(project.settings.export_dir / "subscription_changes")
    lsns = table.column("_lsn").to_pylist()
    assert lsns == list(range(1, len(committed) + 1))  # gap-free, strictly increasing
    exported = list(
        zip(
            table.column("id").to_pylist(),
            [str(a) for a in table.column("amount").to_pylist()],
            strict=True,
        )
    )
    assert len(exported) == len(committed)
    assert sorted(exported) == sorted((s, f"{a}00") for s, a in committed)  # each exactly once
    for sub_id in {s for s, _ in committed}:  # per subscription: the commit order
        in_commit_order = [f"{a}00" for s, a in committed if s == sub_id]
        in_lsn_order = [a for s, a in exported if s == sub_id]
        assert in_lsn_order == in_commit_order
    assert isinstance(table.schema.field("amount").type, pa.Decimal128Type)


def _log_ids(engine: sa.Engine, sub_id: str) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT id FROM subscription_change_log WHERE subscription_id = :s"),
                {"s": sub_id},
            ).scalars()
        )


def _wait_until_blocked_on_a_lock(engine: sa.Engine, pid: int) -> None:
    import time

    for _ in range(200):
        with engine.connect() as conn:
            waiting = conn.execute(
                sa.text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"),
                {"p": pid},
            ).scalar()
        if waiting:
            return
        time.sleep(0.025)
    raise AssertionError(f"backend {pid} never waited for a lock")


def test_second_writer_of_a_key_logs_after_the_first_commits_pg(
    pg_url: str, tmp_path: Path
) -> None:
    """The premise of numbering every visible row in `id` order: the trigger runs after the
    row update, which waits for the row lock, so a key's second writer inserts its log row only
    once the first writer has committed - later `id`, and never visible before the first."""
    engine = writer(pg_url)
    init_demo_source(engine)
    project = Project(_settings(pg_url, tmp_path))
    with engine.begin() as conn:
        insert(conn, "k")
    t1, t2 = engine.connect(), engine.connect()
    t2_thread = threading.Thread(target=update, args=(t2, "k"), kwargs={"amount": "2.00"})
    try:
        t1_tx = t1.begin()
        update(t1, "k", amount="1.00")  # T1 holds k's row lock and stays open
        t2_tx = t2.begin()
        t2_pid = t2.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        t2_thread.start()  # T2 updates k too: it waits for T1's row lock
        _wait_until_blocked_on_a_lock(engine, t2_pid)
        with engine.begin() as conn:
            insert(conn, "other")  # logged while T2 waits

        export_once(project)  # neither k change is committed; the other key goes through
        first = read_exported(project.settings.export_dir / "subscription_changes")
        assert first.column("id").to_pylist() == ["k", "other"]

        t1_tx.commit()
        t2_thread.join(timeout=10)
        assert not t2_thread.is_alive()
        t2_tx.commit()
    finally:
        t1.close()  # rolls back whatever a failed assertion left open, which frees T2
        if t2_thread.is_alive():
            t2_thread.join(timeout=10)
        t2.close()
    k_ids, other_ids = _log_ids(engine, "k"), _log_ids(engine, "other")
    assert k_ids[1] < other_ids[0] < k_ids[2]  # T2's row was inserted after it stopped waiting

    export_once(project)
    table = read_exported(project.settings.export_dir / "subscription_changes")
    assert table.column("id").to_pylist() == ["k", "other", "k", "k"]
    assert [str(a) for a in table.column("amount").to_pylist()] == [
        "9.9900",
        "9.9900",
        "1.0000",
        "2.0000",
    ]
    assert table.column("_lsn").to_pylist() == [1, 2, 3, 4]
