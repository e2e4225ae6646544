"""The manual queue: settle a queued conflict (`--take local|remote|merged`, `--set`) with the
same decide (`three_way.settle_by_hand`, built on `finish`) and apply
(`apply.write_back_transaction`, `record.record_decision`) functions as the job, and read the
queue and the audit log for the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from subscription_export.core.codec import dumps, loads, to_jsonable
from subscription_export.core.values import BadValue, convert
from subscription_export.delivery.clients import DeliveryClient
from subscription_export.delivery.config import DestinationsConfig
from subscription_export.reconcile.apply import (
    refusal_reason,
    write_back,
    write_back_transaction,
)
from subscription_export.reconcile.audit_log import history as audit_history
from subscription_export.reconcile.errors import ReconcileError
from subscription_export.reconcile.feeds import feed_system
from subscription_export.reconcile.pushes import PushReport, push_pending
from subscription_export.reconcile.record import Entry, provenance_of, record_decision
from subscription_export.reconcile.snapshot import conflict_snapshot
from subscription_export.reconcile.source_side import Types, destination_types
from subscription_export.reconcile.strategies import SOURCE
from subscription_export.reconcile.sync_state import (
    Conflict,
    close_conflict,
    get_conflict,
    init_sync_state,
    now,
)
from subscription_export.reconcile.three_way import MANUAL, Take, settle_by_hand
from subscription_export.runtime import Project


@dataclass(frozen=True)
class ResolveReport:
    conflict_id: int
    destination: str
    subscription_id: str
    take: str
    target: dict[str, Any] | None
    written_back: bool
    push_planned: bool
    pushes: PushReport


def parse_sets(pairs: Sequence[str], types: Types) -> dict[str, Any]:
    """`field=value` pairs, each value converted to its column's type (`null` for NULL)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ReconcileError(f"--set {pair!r}: expected field=value")
        if name not in types or name in ("id", "version", "updated_at"):
            settable = ", ".join(n for n in types if n not in ("id", "version", "updated_at"))
            raise ReconcileError(f"--set {name}: not a settable field ({settable})")
        if raw == "null":
            out[name] = None
            continue
        try:
            out[name] = convert(raw, types[name])
        except BadValue as exc:
            raise ReconcileError(f"--set {name}={raw!r}: {exc}") from None
    return out


def resolve_conflict(
    project: Project,
    destinations: DestinationsConfig,
    conflict_id: int,
    take: Take,
    sets: Sequence[str] = (),
    *,
    client: DeliveryClient | None = None,
) -> ResolveReport:
    """Settle a queued conflict and apply it like a reconcile decision: write-back (origin = the
    system), sync base, audit entry, and a push of the result under `<system>:resolve:<id>`."""
    init_sync_state(project.state)
    conflict = _open_conflict(project, conflict_id)
    config = feed_system(destinations, conflict.destination)
    with write_back_transaction(project) as tx:
        types = destination_types(project, config)
        overrides = parse_sets(sets, types)
        snap = conflict_snapshot(tx.conn, config.name, conflict, types)
        verdict = settle_by_hand(snap, conflict.id, conflict.fields, take, overrides, now())
        try:
            plan_log_id = write_back(tx.conn, snap, verdict, types, config.name)
        except (sa.exc.DataError, sa.exc.IntegrityError) as exc:  # the table's own rules
            raise ReconcileError(
                f"conflict {conflict_id} is still open: {refusal_reason(exc)}; take the other"
                " side or --set a value the table accepts"
            ) from None
        entry = Entry(
            ref=f"conflict:{conflict_id}",
            window_key=f"resolve:{conflict.subscription_id}",
            lsn=conflict_id,
            provenance=provenance_of(verdict, snap.local.record, SOURCE, now(), MANUAL.ignored),
            conflict_id=conflict_id,
            note={"take": take, "set": loads(dumps(overrides))},
        )
        resolution = {"take": take, "set": sorted(overrides), "final": verdict.target}

        def record(conn: Connection) -> None:
            record_decision(conn, snap, verdict, plan_log_id, entry)
            close_conflict(conn, conflict_id, resolution)

        tx.record(record)
    pushes = push_pending(project, config, client=client)
    return ResolveReport(
        conflict_id,
        config.name,
        conflict.subscription_id,
        take,
        verdict.target,
        verdict.write_local,
        verdict.push,
        pushes,
    )


def _open_conflict(project: Project, conflict_id: int) -> Conflict:
    conflict = get_conflict(project.state, conflict_id)
    if conflict is None:
        raise ReconcileError(f"no conflict {conflict_id}; see `subscription-export conflicts list`")
    if conflict.status != "open":
        raise ReconcileError(f"conflict {conflict_id} is already {conflict.status}")
    return conflict


def describe_conflict(conflict: Conflict) -> dict[str, Any]:
    """JSON-ready view for `conflicts show`."""
    out = dict(conflict.__dict__)
    for key in ("local_changed_at", "remote_changed_at", "created_at", "updated_at", "resolved_at"):
        out[key] = to_jsonable(out[key])
    return out


def history(project: Project, subscription_id: str) -> list[dict[str, Any]]:
    """Every decision about a subscription, oldest first (for `conflicts history`)."""
    init_sync_state(project.state)
    return [entry.to_dict() for entry in audit_history(project.state, subscription_id)]
