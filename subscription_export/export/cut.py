"""Cutting the change log into windows: sequence new changes, then cut whatever is due."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from subscription_export.formats.writers import FORMATS
from subscription_export.metrics.store import record_capture_sample, sample_capture
from subscription_export.runtime import Project
from subscription_export.source.reader import changed_at_of
from subscription_export.source.sequencer import SequenceResult, sequence
from subscription_export.state.progress import completed_keys
from subscription_export.state.windows import (
    Window,
    insert_windows,
    last_window_end,
    list_windows,
    plan_windows,
)

# A cycle waits this long for the sequencer's locks (another sequencer, DDL on the change log)
# before it cuts what is already sequenced and reports who holds them.
SEQUENCE_WAIT_S = 2.0


@dataclass(frozen=True)
class CutResult:
    sequenced: SequenceResult
    new_windows: list[Window]
    pending: int  # sequenced changes not yet in a window


def cut_windows(project: Project, now: dt.datetime | None = None) -> CutResult:
    """Sequence new changes, then cut whatever windows are due. Safe to run concurrently."""
    settings = project.settings
    seq = sequence(project.source, wait_s=SEQUENCE_WAIT_S)
    record_capture_sample(project.state, sample_capture(project.source))
    moment = now or dt.datetime.now(dt.UTC)

    def age_of(lsn: int) -> float | None:
        changed = changed_at_of(project.source, lsn)
        return None if changed is None else (moment - changed).total_seconds()

    for _attempt in range(5):
        last_hi = last_window_end(project.state)
        planned = plan_windows(
            last_hi, seq.last_lsn, age_of, settings.window_max_changes, settings.window_max_age_s
        )
        if not planned:
            return CutResult(seq, [], seq.last_lsn - last_hi)
        created = insert_windows(project.state, planned)
        if created:
            return CutResult(seq, created, seq.last_lsn - created[-1].hi)
    return CutResult(seq, [], seq.last_lsn - last_window_end(project.state))


def windows_to_run(project: Project, after_hi: int) -> list[Window]:
    """Registered windows past `after_hi` whose canonical export of some captured table has not
    completed yet."""
    done = [
        completed_keys(project.state, d.consumer("parquet"), after_hi) for d in project.datasets
    ]
    return [
        w
        for w in list_windows(project.state, after_hi=after_hi)
        if not all(w.key in d for d in done)
    ]


def export_consumers(project: Project) -> list[str]:
    """Every watermark the exports advance: each captured table's three formats."""
    return [d.consumer(fmt) for d in project.datasets for fmt in FORMATS]


def incomplete_windows(project: Project) -> list[Window]:
    """Windows some table's format has not finished (new ones, or ones a crash interrupted)."""
    consumers = export_consumers(project)
    floor = min(project.watermarks.get(c) for c in consumers)
    done = [completed_keys(project.state, c, floor) for c in consumers]
    return [
        w for w in list_windows(project.state, after_hi=floor) if not all(w.key in d for d in done)
    ]
