"""What `status`, the demo and the dashboard report about the source and the state database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import redact
from subscription_export.delivery.dead_letters import (
    dead_letters,
    held_subscriptions,
    open_windows,
)
from subscription_export.export.cut import export_consumers
from subscription_export.formats.writers import FORMATS
from subscription_export.reconcile.outbox import pending_counts
from subscription_export.reconcile.sync_state import all_cursors, conflicts
from subscription_export.runtime import Project
from subscription_export.source.holders import change_log_holders
from subscription_export.source.installed import capture_gaps, uncaptured_tables
from subscription_export.source.sequencer import last_lsn
from subscription_export.source.snapshot import snapshot_progress
from subscription_export.state.quarantine import open_entries
from subscription_export.state.windows import last_window_end, recent_windows

_change_log = sa.table("subscription_change_log", sa.column("lsn"))


def open_problem_counts(project: Project) -> tuple[int, int]:
    """(open dead letters, conflicts queued for a person) for dashboards and status."""

    with project.state.connect() as conn:
        dead = conn.execute(
            sa.select(sa.func.count())
            .select_from(dead_letters)
            .where(dead_letters.c.status == "open")
        ).scalar_one()
        queued = conn.execute(
            sa.select(sa.func.count()).select_from(conflicts).where(conflicts.c.status == "open")
        ).scalar_one()
    return int(dead), int(queued)


def unsequenced_changes(source: Engine) -> int:
    """Committed change-log rows the sequencer has not numbered yet (PostgreSQL; SQLite: 0)."""
    query = sa.select(sa.func.count()).select_from(_change_log).where(_change_log.c.lsn.is_(None))
    with source.connect() as conn:
        return int(conn.execute(query).scalar_one())


def consumer_lags(
    project: Project, top: int, destinations: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """Watermark, lag and what blocks it, per consumer: every captured table's formats and
    every configured destination always (watermark 0 until it first advances), then any other
    with a watermark (e.g. a table no longer captured)."""
    marks = project.watermarks.all()
    exports = export_consumers(project)
    known = {*exports, *destinations}
    names = [*exports, *destinations, *sorted(set(marks) - known)]
    lags: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        mark = marks.get(name, 0)
        lags[name] = {
            "watermark": mark,
            "lag": top - mark,
            "blocked_by": _blocked_by(project, name),
        }
    return lags


def _blocked_by(project: Project, consumer: str) -> str | None:
    """Why a destination is not advancing, when the state says so (open dead letters)."""
    if consumer in export_consumers(project):
        return None
    return dead_letter_hold(project, consumer)


def dead_letter_hold(project: Project, destination: str) -> str | None:
    """How far open dead letters hold `destination` back (None: they do not), for `status`
    and every `run` cycle: under `block` its later windows wait, under `skip` the records'
    later changes wait behind them; either way it lacks those records' latest state."""
    letters = sum(open_windows(project.state, destination).values())
    if not letters:
        return None
    records = len(held_subscriptions(project.state, destination))
    return (
        f"{letters} open dead letter(s), {records} record(s) waiting behind them:"
        f" dead-letters list --destination {destination}, then"
        f" dead-letters replay --destination {destination} (or discard)"
    )


def snapshot_states(project: Project) -> dict[str, dict[str, Any]]:
    """Per captured table, its snapshot's progress, when one was ever started; `finished`
    false means rows that existed before `init` are still missing from the exports."""
    states = {}
    for table in project.settings.captured_tables:
        progress = snapshot_progress(project.source, table)
        if progress is not None:
            states[table] = progress.as_dict()
    return states


def table_status(project: Project) -> dict[str, dict[str, Any]]:
    """Per captured table: its assets, the watermark of each of its formats, its snapshot."""
    marks = project.watermarks.all()
    tables: dict[str, dict[str, Any]] = {}
    for dataset in project.datasets:
        progress = snapshot_progress(project.source, dataset.table)
        tables[dataset.table] = {
            "assets": [dataset.asset(fmt) for fmt in FORMATS],
            "watermarks": {fmt: marks.get(dataset.consumer(fmt), 0) for fmt in FORMATS},
            "snapshot": None
            if progress is None
            else ("finished" if progress.finished else f"at {progress.rows_done} rows"),
        }
    return tables


def gather_status(
    project: Project, recent: int = 5, destinations: Sequence[str] = ()
) -> dict[str, Any]:
    """Everything `status --json` prints: positions, lags, recent windows, open problems."""
    settings = project.settings
    top = last_lsn(project.source)
    dead, queued = open_problem_counts(project)
    feeds = {
        name: {"applied": c.applied, "requested": c.requested}
        for name, c in sorted(all_cursors(project.state).items())
    }
    return {
        "source": redact(settings.source_url),
        "state": redact(settings.state_url),
        "export_dir": redact(str(settings.export_dir)),
        "last_lsn": top,
        "unsequenced_changes": unsequenced_changes(project.source),
        "held_by": [h.as_dict() for h in change_log_holders(project.source)],
        "changes_not_in_a_window": top - last_window_end(project.state),
        "consumers": consumer_lags(project, top, destinations),
        "tables": table_status(project),
        "recent_windows": [
            {"key": w.key, "changes": w.changes} for w in recent_windows(project.state, recent)
        ],
        "open_dead_letters": dead,
        "open_conflicts": queued,
        "open_quarantine": sum(len(v) for v in open_entries(project.state).values()),
        "feed_cursors": feeds,
        "pending_pushes": pending_counts(project.state),
        "snapshots": snapshot_states(project),
        "uncaptured_tables": uncaptured_tables(project.source, settings.captured_tables),
        "truncate_uncaptured_partitions": capture_gaps(project.source, settings.captured_tables),
    }
