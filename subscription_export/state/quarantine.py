"""Rows that could not be exported, kept with their LSN and reason until someone acts.

An entry is `open` (held out of its window's files), `recovered` (`quarantine replay` wrote it
into them) or `discarded` (`quarantine discard`: it stays out, on purpose). Entries someone acted
on are never deleted; each action is audited in `quarantine_actions`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.datasets import LEGACY_DATASET
from subscription_export.state.tables import quarantine, quarantine_actions

EntryStatus = Literal["open", "recovered", "discarded"]
HELD_STATUSES = ("open", "discarded")  # both stay out of the window's files


class QuarantineEntry(Protocol):
    lsn: int
    field: str | None
    reason: str
    raw: str


def record_quarantine(
    engine: Engine,
    window_key: str,
    rows: Sequence[QuarantineEntry],
    dataset: str = LEGACY_DATASET,
) -> None:
    """Idempotent per (window, LSN): re-exporting a window does not duplicate entries.
    `dataset`: the table's export that found `rows`; only its own entries can be removed
    (the window's other tables keep theirs).

    An entry found again keeps its status (a discarded one stays discarded) with the newest
    field and reason; a recovered one found again is open again (its change left the files, it
    is shown). An open entry not found again (only possible for a change no longer held, i.e.
    before this release) is removed as before; recovered and discarded ones are kept.
    """
    now = dt.datetime.now(dt.UTC)
    found = {r.lsn: r for r in rows}
    with engine.begin() as conn:
        listed = conn.execute(
            sa.select(quarantine.c.lsn, quarantine.c.status, quarantine.c.dataset).where(
                quarantine.c.window_key == window_key
            )
        ).all()
        existing = {int(r.lsn): str(r.status) for r in listed}
        ours = {int(r.lsn) for r in listed if (r.dataset or LEGACY_DATASET) == dataset}
        gone = [
            lsn
            for lsn, status in existing.items()
            if lsn not in found and status == "open" and lsn in ours
        ]
        if gone:
            conn.execute(
                sa.delete(quarantine).where(
                    quarantine.c.window_key == window_key, quarantine.c.lsn.in_(gone)
                )
            )
        for lsn, r in found.items():
            values = {"field": r.field, "reason": r.reason, "raw": r.raw, "dataset": dataset}
            if lsn not in existing:
                conn.execute(
                    sa.insert(quarantine).values(
                        window_key=window_key, lsn=lsn, created_at=now, status="open", **values
                    )
                )
                continue
            if existing[lsn] == "recovered":
                values |= {"status": "open", "action_id": None}
            conn.execute(
                sa.update(quarantine)
                .where(quarantine.c.window_key == window_key, quarantine.c.lsn == lsn)
                .values(**values)
            )


def list_quarantine(
    engine: Engine, limit: int = 100, statuses: Collection[str] = ("open",)
) -> list[dict[str, object]]:
    """Entries newest LSN first; by default only the open ones (`statuses=()`: all)."""
    query = sa.select(quarantine).order_by(quarantine.c.lsn.desc()).limit(limit)
    if statuses:
        query = query.where(quarantine.c.status.in_(list(statuses)))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def quarantined_lsns(engine: Engine, window_key: str, dataset: str | None = None) -> set[int]:
    """LSNs of the window that are not in its files (open or discarded entries); `dataset`:
    only those of that table's export."""
    return set(held_entries(engine, window_key, dataset))


def held_entries(
    engine: Engine, window_key: str, dataset: str | None = None
) -> dict[int, tuple[str | None, str]]:
    """LSN → (field, reason) of the window's entries that stay out of its files (`dataset`:
    of that table's export only)."""
    query = sa.select(quarantine.c.lsn, quarantine.c.field, quarantine.c.reason).where(
        quarantine.c.window_key == window_key, quarantine.c.status.in_(HELD_STATUSES)
    )
    if dataset is not None:
        query = query.where(sa.func.coalesce(quarantine.c.dataset, LEGACY_DATASET) == dataset)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return {int(lsn): (field, str(reason)) for lsn, field, reason in rows}


def revision_of(
    engine: Engine, window_key: str, dataset: str | None = None
) -> tuple[int, tuple[int, ...]]:
    """(the window's file revision, the LSNs replays recovered into it): 1 + the replays that
    recovered something, in any table (the revision counts versions of the window's files);
    `dataset`: only that table's recovered LSNs. Read from state, so re-exporting gives the
    same manifest."""
    recovered_of = quarantine.c.status == "recovered"
    if dataset is not None:
        recovered_of &= sa.func.coalesce(quarantine.c.dataset, LEGACY_DATASET) == dataset
    with engine.connect() as conn:
        revision = conn.execute(
            sa.select(sa.func.max(quarantine_actions.c.revision)).where(
                quarantine_actions.c.window_key == window_key
            )
        ).scalar()
        recovered = conn.execute(
            sa.select(quarantine.c.lsn)
            .where(quarantine.c.window_key == window_key, recovered_of)
            .order_by(quarantine.c.lsn)
        ).all()
    return int(revision or 1), tuple(int(r[0]) for r in recovered)


def entry_datasets(engine: Engine, window_key: str, lsns: Collection[int]) -> dict[int, str]:
    """LSN → the dataset (table export) whose entry it is, for these entries of the window."""
    query = sa.select(
        quarantine.c.lsn, sa.func.coalesce(quarantine.c.dataset, LEGACY_DATASET)
    ).where(quarantine.c.window_key == window_key, quarantine.c.lsn.in_(list(lsns)))
    with engine.connect() as conn:
        return {int(lsn): str(dataset) for lsn, dataset in conn.execute(query)}


def open_entries(
    engine: Engine, window_key: str | None = None, lsns: Collection[int] = ()
) -> dict[str, list[int]]:
    """Window key → its open LSNs (ascending), narrowed to a window and/or LSNs."""
    query = sa.select(quarantine.c.window_key, quarantine.c.lsn).where(
        quarantine.c.status == "open"
    )
    if window_key is not None:
        query = query.where(quarantine.c.window_key == window_key)
    if lsns:
        query = query.where(quarantine.c.lsn.in_(list(lsns)))
    found: dict[str, list[int]] = {}
    with engine.connect() as conn:
        for key, lsn in conn.execute(query.order_by(quarantine.c.window_key, quarantine.c.lsn)):
            found.setdefault(str(key), []).append(int(lsn))
    return found


def open_count(engine: Engine, window_key: str, dataset: str) -> int:
    """The window's open entries of one table's export (`dataset`)."""
    query = (
        sa.select(sa.func.count())
        .select_from(quarantine)
        .where(
            quarantine.c.window_key == window_key,
            quarantine.c.status == "open",
            sa.func.coalesce(quarantine.c.dataset, LEGACY_DATASET) == dataset,
        )
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def recovered_windows(
    engine: Engine, window_key: str | None = None, lsns: Collection[int] = ()
) -> list[str]:
    """Windows with recovered entries (narrowed like `open_entries`)."""
    query = sa.select(quarantine.c.window_key).where(quarantine.c.status == "recovered")
    if window_key is not None:
        query = query.where(quarantine.c.window_key == window_key)
    if lsns:
        query = query.where(quarantine.c.lsn.in_(list(lsns)))
    with engine.connect() as conn:
        return sorted({str(k) for k in conn.execute(query.distinct()).scalars()})


@dataclass(frozen=True)
class Action:
    """One audited `quarantine replay` or `quarantine discard` of one window."""

    action: Literal["replay", "discard"]
    actor: str
    window_key: str
    lsns: tuple[int, ...]
    recovered: tuple[int, ...] = ()
    outcome: dict[str, Any] | None = None
    reason: str | None = None


def record_action(
    engine: Engine,
    action: Action,
    still_bad: Sequence[QuarantineEntry] = (),
) -> int:
    """Audit the action and apply it to the entries, in one transaction; its id.

    replay: recovered entries become `recovered` and the window's revision goes up by one
    (only when something was recovered: the files change only then); entries still bad get
    the new field and reason. discard: the entries become `discarded`.
    """
    with engine.begin() as conn:
        revision = _next_revision(conn, action.window_key) if action.recovered else None
        inserted = conn.execute(
            sa.insert(quarantine_actions).values(
                action=action.action,
                actor=action.actor,
                at=dt.datetime.now(dt.UTC),
                window_key=action.window_key,
                lsns=json.dumps(list(action.lsns)),
                recovered=json.dumps(list(action.recovered)),
                outcome=json.dumps(action.outcome or {}, sort_keys=True, default=str),
                reason=action.reason,
                revision=revision,
            )
        )
        action_id = inserted.inserted_primary_key[0]
        resolved = action.recovered if action.action == "replay" else action.lsns
        status = "recovered" if action.action == "replay" else "discarded"
        if resolved:
            conn.execute(
                sa.update(quarantine)
                .where(
                    quarantine.c.window_key == action.window_key,
                    quarantine.c.lsn.in_(list(resolved)),
                    quarantine.c.status == "open",
                )
                .values(status=status, action_id=action_id)
            )
        for entry in still_bad:
            conn.execute(
                sa.update(quarantine)
                .where(quarantine.c.window_key == action.window_key, quarantine.c.lsn == entry.lsn)
                .values(field=entry.field, reason=entry.reason, raw=entry.raw)
            )
    return int(action_id)


def _next_revision(conn: Connection, window_key: str) -> int:
    current = conn.execute(
        sa.select(sa.func.max(quarantine_actions.c.revision)).where(
            quarantine_actions.c.window_key == window_key
        )
    ).scalar()
    return int(current or 1) + 1


def update_outcome(engine: Engine, action_id: int, outcome: dict[str, Any]) -> None:
    """Complete an action's audited outcome (a replay's deliveries come after its files)."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(quarantine_actions)
            .where(quarantine_actions.c.id == action_id)
            .values(outcome=json.dumps(outcome, sort_keys=True, default=str))
        )


def history(engine: Engine, limit: int = 100) -> list[dict[str, object]]:
    """Audited actions, newest first, with their JSON fields decoded."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(quarantine_actions).order_by(quarantine_actions.c.id.desc()).limit(limit)
        ).mappings()
        found = [dict(r) for r in rows]
    for row in found:
        for name in ("lsns", "recovered", "outcome"):
            row[name] = json.loads(str(row[name]))
    return found
