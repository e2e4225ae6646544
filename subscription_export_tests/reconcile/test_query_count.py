"""SQL statements per remote edit in one reconcile run over a 200-edit feed batch (issue 15's
target: at most 3, with bases, local rows and change-log times loaded set-based and the
decisions written in batches). Counted with SQLAlchemy's `before_cursor_execute` on every
engine (an executemany counts once, `BEGIN` counts); real SQLite or PostgreSQL source, SQLite
state, real sandbox ERP over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export_tests.reconcile.test_reconcile import world

EDITS = 200
TARGET = 3  # the per-edit path of affcb25 sent 21.1 (bench/reconcile_bench.py agreed)


@contextmanager
def counting() -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)


def _statements_per_edit(settings: Settings, tmp_path: Path) -> float:
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}, ("erp",)) as w:
        w.batch_limit = EDITS
        sids = [f"s{n:03d}" for n in range(EDITS)]
        for sid in sids:
            w.insert(sid)
        w.deliver()
        for sid in sids:
            w.remote_edit("erp", sid, 5, name=f"ERP {sid}")
        with counting() as statements:
            report = w.reconcile("erp")
        assert report.applied.written_back == EDITS
        assert w.source_record(sids[0])["name"] == f"ERP {sids[0]}"  # type: ignore[index]
        return len(statements) / EDITS


@pytest.mark.parametrize("source_url", ["sqlite", "postgresql"], indirect=True)
def test_at_most_three_statements_per_edit(settings: Settings, tmp_path: Path) -> None:
    assert _statements_per_edit(settings, tmp_path) <= TARGET


def _statements_per_edit_with_pushes(settings: Settings, tmp_path: Path) -> float:
    """Each record: the app changes the amount (not yet delivered), the ERP's user the name;
    the merge is written back and pushed once the delivery has sent the app's change. Counts
    both reconcile runs: the one that decides (its pushes wait) and the one that pushes."""
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}, ("erp",)) as w:
        w.batch_limit = EDITS
        sids = [f"s{n:03d}" for n in range(EDITS)]
        for sid in sids:
            w.insert(sid)
        w.deliver()
        for sid in sids:
            w.update(sid, 1, amount="12.00")
            w.remote_edit("erp", sid, 5, name=f"ERP {sid}")
        with counting() as statements:
            decided = w.reconcile("erp")
        assert (decided.applied.pushes_planned, decided.pushes.deferred) == (EDITS, EDITS)
        w.deliver()
        with counting() as more:
            pushed = w.reconcile("erp")
        assert pushed.pushes.pushed == EDITS
        assert w.remote_record("erp", sids[0])["name"] == f"ERP {sids[0]}"  # type: ignore[index]
        return (len(statements) + len(more)) / EDITS


@pytest.mark.parametrize("source_url", ["sqlite", "postgresql"], indirect=True)
def test_at_most_three_statements_per_edit_with_pushes(settings: Settings, tmp_path: Path) -> None:
    assert _statements_per_edit_with_pushes(settings, tmp_path) <= TARGET
