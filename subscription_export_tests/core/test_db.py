"""SQLite engines from `engine_for`: connecting waits for another process's lock."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from subscription_export.core.db import engine_for


def test_connecting_to_a_new_sqlite_file_waits_for_another_process(tmp_path: Path) -> None:
    """A new connection switches the file to WAL first thing, which needs the file to itself.
    SQLite answers "database is locked" at once, without waiting for the busy timeout, when
    another connection holds the write lock (it would deadlock otherwise): two processes starting
    together on a new state database hit this. The switch must wait for the lock instead."""
    path = tmp_path / "state.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE t (x INTEGER)")
    release = threading.Timer(0.5, holder.execute, ["COMMIT"])
    release.start()
    try:
        with engine_for(f"sqlite:///{path}").connect() as conn:
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(sa.text("SELECT COUNT(*) FROM t")).scalar() == 0
    finally:
        release.join()
        holder.close()


def test_sqlite_engines_reuse_their_connections(tmp_path: Path) -> None:
    """A cycle runs ~60 short state transactions (issue 15): each used to open the file, run
    four PRAGMAs, close it and, as the last connection to the WAL file, checkpoint and fsync.
    The engine pools them: ten transactions open one connection, the WAL stays between
    commits, every write is visible to a new reader, and disposing the engine (the last close)
    checkpoints as before."""
    path = tmp_path / "kept.db"
    wal = tmp_path / "kept.db-wal"
    engine = engine_for(f"sqlite:///{path}", writer=True)
    opened = _count_connects(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    for x in range(10):
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": x})
        assert wal.exists()  # closed, not checkpointed
    assert opened == [1]
    with engine_for(f"sqlite:///{path}").connect() as reader:
        assert reader.execute(sa.text("SELECT COUNT(*) FROM t")).scalar() == 10
    engine_for(f"sqlite:///{path}").dispose()
    engine.dispose()
    assert not wal.exists()
    with sqlite3.connect(path) as plain:
        assert plain.execute("SELECT COUNT(*) FROM t").fetchone() == (10,)


def _count_connects(engine: sa.Engine) -> list[int]:
    opened = [0]

    @sa.event.listens_for(engine, "connect")
    def _on_connect(_dbapi, _record):  # type: ignore[no-untyped-def]
        opened[0] += 1

    return opened


def _insert_in_child(engine: sa.Engine, opened: list[int], out: Any) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t VALUES (2)"))
    out.put(opened[0])


def test_a_forked_child_opens_its_own_sqlite_connections(tmp_path: Path) -> None:
    """A pooled SQLite connection used from two processes breaks SQLite's locking: a forked
    child (multiprocessing, Dagster's executors) inherits the parent's pool and must open its
    own connection instead of checking out the parent's."""
    engine = engine_for(f"sqlite:///{tmp_path / 'fork.db'}", writer=True)
    opened = _count_connects(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_insert_in_child, args=(engine, opened, out))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert out.get(timeout=5) == 2  # the parent's one, then the child's own
    with engine.begin() as conn:  # the parent's pooled connection still works
        assert conn.execute(sa.text("SELECT SUM(x) FROM t")).scalar() == 3
    assert opened == [1]
