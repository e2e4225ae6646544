"""What `run` says about quarantined changes (per window, and loudly when nothing got through)
and about an unfinished snapshot.

A window whose every change was quarantined exported empty files and still "succeeded"; a
user whose table did not match the capture saw "1 exported, 0 failed" and lost everything
(issue 13). Such a run now exits 3, "needs operator action", naming `quarantine list`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from subscription_export.runtime import Project
from subscription_export.source.snapshot import unfinished
from subscription_export.state.quarantine import open_entries
from subscription_export.state.windows import Window

NEEDS_OPERATOR = 3


@dataclass(frozen=True)
class Quarantined:
    window: Window
    count: int

    @property
    def everything(self) -> bool:
        return self.count >= self.window.changes

    def line(self) -> str:
        if self.everything:
            return (
                f"window {self.window.key}: all {self.count} change(s) quarantined, nothing"
                " exported; see `subscription-export quarantine list`"
            )
        return (
            f"window {self.window.key}: {self.count} of {self.window.changes} change(s)"
            " quarantined (subscription-export quarantine list)"
        )


def quarantined_in(project: Project, windows: Sequence[Window]) -> list[Quarantined]:
    """Windows with open quarantine entries, with their counts."""
    found = []
    for window in windows:
        count = len(open_entries(project.state, window.key).get(window.key, []))
        if count:
            found.append(Quarantined(window, count))
    return found


def unfinished_snapshot(project: Project) -> str | None:
    """One line when a captured table's snapshot was started but not finished (an `init`
    killed mid-snapshot): the rows it has not reached yet are missing from every export."""
    for table in project.settings.captured_tables:
        line = unfinished(project.source, table)
        if line is not None:
            return line
    return None
