"""`quarantine replay` and `quarantine discard`: the only ways a window's files change after its
first export, both audited (who, when, which LSNs, what came of it).

Replay of a window, step by step:

1. **Try again** the open entries asked for: read those changes from the change log (a
   row there never changes) and convert them as an export of the window would now - after
   `init` registered a column a PostgreSQL image carried, after a schema-contract change, after
   a code fix. A value fixed at the source arrives as a *new* change with its own LSN and is
   exported with its own window; it does not recover the old change, which stays quarantined
   unless it converts on its own (discard it once the new change has taken its place).
2. **Audit and mark**, in one transaction: the action with the recovered LSNs and the still bad
   ones (whose reason is updated), and the window's file revision + 1 if anything was recovered.
3. **Re-export** the window (Parquet, CSV, JSON Lines) exactly as a normal export does: the
   held entries (open, discarded) stay out, the recovered ones are in, so the files equal a
   fresh export of the window; the manifests carry `revision` and `recovered_lsns`.
4. **Deliver** the recovered changes to every destination that had already completed the window
   (`delivery.recovered`: original LSN and key; superseded when the destination holds a later
   change of the record).

Nothing recovered: no file changes, the attempt is still audited. Running replay again resumes
a replay cut short after step 2 (re-exports a window whose manifest is behind its revision,
sends what a destination has not got) and otherwise does nothing.
"""

from __future__ import annotations

import dataclasses
import getpass
import socket
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from subscription_export.core.datasets import TableDataset
from subscription_export.core.errors import RangeError
from subscription_export.delivery.config import DestinationsConfig
from subscription_export.delivery.recovered import RecoveredDelivery, deliver_recovered
from subscription_export.export.flow import export_window_file, plan_dataset
from subscription_export.export.window import QuarantinedRow, open_window
from subscription_export.formats.manifest import manifest_path, read_manifest
from subscription_export.formats.writers import FORMATS
from subscription_export.runtime import Project
from subscription_export.source.reader import iter_log_tables
from subscription_export.state.leases import default_holder
from subscription_export.state.quarantine import (
    Action,
    entry_datasets,
    held_entries,
    open_entries,
    record_action,
    recovered_windows,
    revision_of,
    update_outcome,
)
from subscription_export.state.windows import Window, find_window


def actor() -> str:
    """user@host, as the audit shows who acted."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass
class WindowReplay:
    window_key: str
    asked: list[int]
    recovered: list[int] = field(default_factory=list)
    still_bad: list[QuarantinedRow] = field(default_factory=list)
    revision: int = 1
    reexported: bool = False
    deliveries: list[RecoveredDelivery] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "window": self.window_key,
            "asked": self.asked,
            "recovered": self.recovered,
            "still_quarantined": [
                {"lsn": q.lsn, "field": q.field, "reason": q.reason} for q in self.still_bad
            ],
            "revision": self.revision,
            "reexported": self.reexported,
            "deliveries": [
                {
                    "destination": d.destination,
                    "lsn": d.lsn,
                    "outcome": d.outcome,
                    "detail": d.detail,
                }
                for d in self.deliveries
            ],
        }


def _window(project: Project, key: str) -> Window:
    window = find_window(project.state, key)
    if window is None:
        raise RangeError(f"window {key} is not registered")
    return window


def _try_again(
    project: Project, window: Window, lsns: list[int], dataset: TableDataset
) -> list[QuarantinedRow]:
    """Convert just these changes of `dataset`'s table as a re-export of the window would; the
    ones still bad."""
    held = held_entries(project.state, window.key, dataset.name)
    held = {k: v for k, v in held.items() if k not in lsns}
    plan, version = plan_dataset(project, window.lo, window.hi, held, dataset)
    stream = open_window(project.source, window.lo, window.hi, 1, plan, version, dataset.table)

    def tables() -> Iterator[Any]:
        for lsn in lsns:
            yield from iter_log_tables(project.source, lsn, lsn, 1, dataset.table)

    stream = dataclasses.replace(stream, _tables=tables())
    for _batch in stream.batches():
        pass
    return stream.quarantined


def _try_every_table(
    project: Project, window: Window, lsns: list[int]
) -> tuple[list[int], list[QuarantinedRow]]:
    """Try each table's entries with its own plan; the LSNs recovered and the entries still
    bad. An entry of a table no longer captured cannot be tried: it is still bad, and says why."""
    owner = entry_datasets(project.state, window.key, lsns)
    recovered: list[int] = []
    still_bad: list[QuarantinedRow] = []
    for dataset in project.datasets:
        mine = [lsn for lsn in lsns if owner.get(lsn) == dataset.name]
        if mine:
            bad = _try_again(project, window, mine, dataset)
            still_bad += bad
            recovered += [lsn for lsn in mine if lsn not in {q.lsn for q in bad}]
    captured = {dataset.name for dataset in project.datasets}
    for lsn in lsns:
        name = owner.get(lsn)
        if name not in captured:
            field_name = held_entries(project.state, window.key, name).get(lsn, (None, ""))[0]
            why = (
                f"its export {name!r} is of a table that is not captured any more"
                " (SUBSCRIPTION_EXPORT_TABLES): add the table back to replay it, or discard it"
            )
            still_bad.append(QuarantinedRow(lsn, field_name, why, ""))
    return sorted(recovered), sorted(still_bad, key=lambda q: q.lsn)


def replay(
    project: Project,
    destinations: DestinationsConfig,
    *,
    window_key: str | None = None,
    lsns: Collection[int] = (),
    who: str | None = None,
) -> list[WindowReplay]:
    """Replay the open entries of `window_key` and/or `lsns` (all open ones if neither)."""
    person = who or actor()
    asked = open_entries(project.state, window_key, lsns)
    keys = sorted(set(asked) | set(recovered_windows(project.state, window_key, lsns)))
    done = [_replay_window(project, destinations, key, asked.get(key, []), person) for key in keys]
    return [r for r in done if r.asked or r.reexported or r.deliveries]  # no-ops are not shown


def _replay_window(
    project: Project,
    destinations: DestinationsConfig,
    key: str,
    lsns: list[int],
    person: str,
) -> WindowReplay:
    window = _window(project, key)
    result = WindowReplay(key, lsns)
    action_id = None
    if lsns:
        result.recovered, result.still_bad = _try_every_table(project, window, lsns)
        action = Action("replay", person, key, tuple(lsns), tuple(result.recovered))
        action_id = record_action(project.state, action, result.still_bad)
    result.revision, _ = revision_of(project.state, key)
    recovered: dict[str, tuple[int, ...]] = {}
    for dataset in project.datasets:  # the revision is the window's: every table's files
        recovered[dataset.table] = revision_of(project.state, key, dataset.name)[1]
        if _manifest_revision(project, key, dataset) < result.revision:
            holder = default_holder()
            for fmt in FORMATS:
                export_window_file(project, fmt, window, holder=holder, dataset=dataset)
            result.reexported = True
    for config in destinations.destinations.values():
        mine = recovered.get(config.table or project.primary.table, ())
        with config.client() as client:
            result.deliveries += deliver_recovered(
                project, config, window, mine, default_holder(), client
            )
    if action_id is not None:
        update_outcome(project.state, action_id, result.as_json())
    return result


def _manifest_revision(project: Project, key: str, dataset: TableDataset) -> int:
    path = manifest_path(project.settings.export_dir, dataset.asset("parquet"), key)
    try:
        return int(read_manifest(path).get("revision", 1))
    except (OSError, ValueError):
        return 0  # missing or unreadable: write it


def discard(
    project: Project,
    *,
    reason: str,
    window_key: str | None = None,
    lsns: Collection[int] = (),
    who: str | None = None,
) -> dict[str, list[int]]:
    """Mark the open entries discarded (kept, audited, out of the files for good)."""
    person = who or actor()
    found = open_entries(project.state, window_key, lsns)
    for key, chosen in found.items():
        record_action(project.state, Action("discard", person, key, tuple(chosen), reason=reason))
    return found
