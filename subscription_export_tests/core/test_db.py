"""SQLite engines from `engine_for`: connecting waits for another process's lock."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import sqlalchemy as sa

from subscription_export.core.db import engine_for, sqlite_kept_open


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


def test_sqlite_kept_open_spares_the_checkpoint_at_each_close(tmp_path: Path) -> None:
    """Engines use no pool: the close of the last connection to a WAL file checkpoints it and
    deletes the WAL (an fsync per closed write transaction). Inside `sqlite_kept_open` a close
    leaves the WAL where it is; the writes are still visible to every new connection, and the
    last close after the block checkpoints as before."""
    path = tmp_path / "kept.db"
    wal = tmp_path / "kept.db-wal"
    engine = engine_for(f"sqlite:///{path}", writer=True)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    assert not wal.exists()  # the control: the last close checkpointed and removed it
    with sqlite_kept_open(engine, engine):
        for x in range(3):
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": x})
            assert wal.exists()  # closed, not checkpointed
        with engine_for(f"sqlite:///{path}").connect() as reader:
            assert reader.execute(sa.text("SELECT COUNT(*) FROM t")).scalar() == 3
    assert not wal.exists()
    with sqlite3.connect(path) as plain:
        assert plain.execute("SELECT COUNT(*) FROM t").fetchone() == (3,)
