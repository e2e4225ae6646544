"""What `status`, the demo and the dashboard report about the source and the state database."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import redact
from subscription_export.delivery.dead_letters import dead_letters
from subscription_export.formats.writers import FORMATS
from subscription_export.reconcile.outbox import pending_counts
from subscription_export.reconcile.sync_state import all_cursors, conflicts
from subscription_export.runtime import Project
from subscription_export.source.holders import change_log_holders
from subscription_export.source.sequencer import last_lsn
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


def consumer_lags(project: Project, top: int) -> dict[str, dict[str, int]]:
    """Watermark and lag per consumer: the formats always, destinations once they have a
    watermark."""
    marks = project.watermarks.all()
    names = [*FORMATS, *sorted(set(marks) - set(FORMATS))]
    return {
        name: {"watermark": marks.get(name, 0), "lag": top - marks.get(name, 0)} for name in names
    }


def gather_status(project: Project, recent: int = 5) -> dict[str, Any]:
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
        "export_dir": str(settings.export_dir),
        "last_lsn": top,
        "unsequenced_changes": unsequenced_changes(project.source),
        "held_by": [h.as_dict() for h in change_log_holders(project.source)],
        "changes_not_in_a_window": top - last_window_end(project.state),
        "consumers": consumer_lags(project, top),
        "recent_windows": [
            {"key": w.key, "changes": w.changes} for w in recent_windows(project.state, recent)
        ],
        "open_dead_letters": dead,
        "open_conflicts": queued,
        "feed_cursors": feeds,
        "pending_pushes": pending_counts(project.state),
    }
