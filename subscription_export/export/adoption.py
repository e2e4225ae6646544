"""Which capture schema version a window's dataset must reach so that changes written after
`ALTER TABLE` but before `init` (PostgreSQL images carry whole rows) can be read once `init` has
registered their columns (`DatasetPlan.adopting` reads each such change).

Changes still held in the quarantine (not released by `quarantine replay`) do not count: they
stay out of the files, so they must not widen the window's schema either - a re-export of a
window gives the same bytes until someone replays it.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy.engine import Engine

from subscription_export.core.columns import SourceColumn
from subscription_export.source.reader import uncaptured_keys


def newest_version(
    source: Engine,
    lo: int,
    hi: int,
    capture: dict[int, tuple[SourceColumn, ...]],
    present: dict[int, int],
    held: Collection[int],
    table: str | None = None,
) -> tuple[int, int]:
    """(the newest capture version the window's dataset folds in, its first LSN here)."""
    newest = max(present)
    first = present[newest]
    # Only a change of an older version than the newest registered one can be adopted by a
    # later version; the window's other changes need no scan of their images (the scan is a
    # server-side jsonb_each of every image, a third of a 1M-change export when unrestricted).
    captured = {v: frozenset(c.name for c in cols) for v, cols in capture.items()}
    older = {v: keys for v, keys in captured.items() if v < max(captured) and v in present}
    if not older:
        return newest, first
    for lsn, (version, keys) in uncaptured_keys(source, lo, hi, older, table).items():
        if lsn in held:
            continue
        later = [v for v in sorted(captured) if v > version and keys <= captured[v]]
        if later and later[0] > newest:
            newest, first = later[0], lsn
    return newest, first
