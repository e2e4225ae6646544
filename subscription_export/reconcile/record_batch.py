"""Recording the decisions of a whole feed batch (at most one per subscription) in one statement
per table: the same rows as `record.record_decision` writes one decision at a time (the rows
come from the same `record.state_writes`/`audit_entry`), in the same order per subscription.
A queued conflict is still opened or updated per decision: its id goes into the audit entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from subscription_export.core.codec import Renderer
from subscription_export.reconcile.audit_log import add_audits, audit_row
from subscription_export.reconcile.outbox import add_pushes, push_row, supersede_many
from subscription_export.reconcile.record import (
    Entry,
    audit_entry,
    queue_conflict,
    state_writes,
)
from subscription_export.reconcile.sync_bases import (
    base_row,
    get_bases,
    provenance_rows,
    put_bases,
    put_provenances,
)
from subscription_export.reconcile.three_way import Snapshot, Verdict


@dataclass(frozen=True)
class Decided:
    """One decision to record: its snapshot, verdict, the change-log id it follows, its keys."""

    snap: Snapshot
    verdict: Verdict
    plan_log_id: int
    entry: Entry


def record_decisions(conn: Connection, system: str, decided: Sequence[Decided]) -> None:
    """Record every decision (distinct subscriptions of `system`): the current bases read in one
    query, then bases, provenance, superseded and new pushes, queued conflicts, audit entries."""
    if len({d.snap.subscription_id for d in decided}) != len(decided):
        raise ValueError("record_decisions takes at most one decision per subscription")
    render = Renderer()  # records go into the base and the audit rows alike: render each once
    _record_state(conn, system, [d for d in decided if not d.snap.bad_key], render)
    audits = []
    for d in decided:
        conflict_id = d.entry.conflict_id
        if d.verdict.outcome == "queued" and conflict_id is None:
            conflict_id = queue_conflict(conn, d.snap, d.verdict)
        entry = audit_entry(d.snap, d.verdict, d.entry, conflict_id)
        audits.append(audit_row(**entry, render=render))
    add_audits(conn, audits)


def _record_state(
    conn: Connection, system: str, decided: Sequence[Decided], render: Renderer
) -> None:
    """Bases, provenance, superseded and new pushes of decisions about real keys (a change
    whose id is no key leaves its audit entry alone: no base under an id no row can have)."""
    idents = [d.snap.subscription_id for d in decided]
    current = get_bases(conn, system, idents)
    writes = [
        state_writes(d.snap, d.verdict, d.plan_log_id, d.entry, current.get(ident))
        for d, ident in zip(decided, idents, strict=True)
    ]
    put_bases(
        conn,
        [
            base_row(current.get(ident), system, ident, **w.base, render=render)
            for ident, w in zip(idents, writes, strict=True)
        ],
    )
    put_provenances(
        conn,
        [
            row
            for ident, w in zip(idents, writes, strict=True)
            if w.provenance is not None
            for row in provenance_rows(ident, *w.provenance)
        ],
    )
    supersede_many(
        conn,
        [(system, ident, None) for ident, w in zip(idents, writes, strict=True) if w.supersede],
    )
    add_pushes(conn, [push_row(**w.push) for w in writes if w.push is not None])
