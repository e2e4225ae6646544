"""What `status` and the dashboard report about the state database."""

from __future__ import annotations

import sqlalchemy as sa

from subscription_export.delivery.dead_letters import dead_letters
from subscription_export.reconcile.sync_state import conflicts
from subscription_export.runtime import Project


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
