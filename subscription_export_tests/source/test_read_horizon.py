"""Invariant 1: gap-free LSNs in commit order; a late commit is never skipped."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.export import cut as pipeline
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_canonical, finish
from subscription_export.runtime import Project
from subscription_export.source.schema import init_source
from subscription_export_tests.helpers import insert, read_exported, writer

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


def test_open_transaction_holds_back_later_commits_pg(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # T1 stays open on purpose: the cycle must give up waiting for it, as in production.
    monkeypatch.setattr(pipeline, "SEQUENCE_WAIT_S", 0.5)
    engine = writer(pg_url)
    init_source(engine)
    project = Project(_settings(pg_url, tmp_path))
    with engine.begin() as conn:
        insert(conn, "s0")
    t1 = engine.connect()
    t1_tx = t1.begin()
    insert(t1, "t1")  # T1 writes first and stays open
    with engine.begin() as conn:
        insert(conn, "t2")  # T2 writes later and commits first
    seen_naive, last_id = naive_serial_export(engine, 0)

    export_once(project)
    first = read_exported(project.settings.export_dir / "subscription_changes")
    assert first.column("id").to_pylist() == ["s0"]  # T2 waits behind T1's open transaction

    t1_tx.commit()
    t1.close()
    export_once(project)
    table = read_exported(project.settings.export_dir / "subscription_changes")
    assert table.column("id").to_pylist() == ["s0", "t1", "t2"]
    assert table.column("_lsn").to_pylist() == [1, 2, 3]

    # The same interleaving with a plain serial column loses T1's change for good.
    more, _ = naive_serial_export(engine, last_id)
    assert sorted(seen_naive) == ["s0", "t2"] and more == []
    assert "t1" not in seen_naive + more


def test_sqlite_single_writer_reader_sees_only_committed(sqlite_url: str, tmp_path: Path) -> None:
    engine = writer(sqlite_url)
    init_source(engine)
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
    init_source(engine)
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
