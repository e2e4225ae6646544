"""SQLite engines from `engine_for`: connecting waits for another process's lock."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

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
