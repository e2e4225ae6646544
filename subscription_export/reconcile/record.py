"""What a decision leaves in the state database: the sync base, field provenance, a pending
push, a queued conflict and the audit entry. Idempotent: the same decision recorded twice
leaves the same rows (a rerun after a crash records it again).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from subscription_export.core.codec import dumps, loads, to_jsonable
from subscription_export.delivery.clients import idempotency_key
from subscription_export.delivery.columns import audit_id
from subscription_export.reconcile.audit_log import add_audit
from subscription_export.reconcile.conflicts import RECORD, detect
from subscription_export.reconcile.outbox import add_push, supersede_pushes
from subscription_export.reconcile.strategies import MISSING, same
from subscription_export.reconcile.sync_bases import SyncBase, get_base, put_base, put_provenance
from subscription_export.reconcile.sync_state import (
    add_conflict,
    open_conflict,
    update_conflict_remote,
)
from subscription_export.reconcile.three_way import Snapshot, Verdict

# field values, system, UTC time, the source row version they are in from (None: unknown)
Provenance = tuple[Mapping[str, Any], str, dt.datetime, int | None]


@dataclass(frozen=True)
class Entry:
    """How a decision is keyed: the audit `ref`, the push key's window and LSN parts (so a
    re-sent push is applied once), the provenance a write-back creates, and for a manual
    resolution its conflict and the choice made (`note`)."""

    ref: str
    window_key: str
    lsn: int
    provenance: Provenance | None
    conflict_id: int | None = None
    note: Mapping[str, Any] | None = None


def record_decision(
    conn: Connection, snap: Snapshot, verdict: Verdict, plan_log_id: int, entry: Entry
) -> int | None:
    """Sync base, provenance, pending push, conflict and audit entry of one decision; returns
    the conflict it opened or updated (or `entry.conflict_id`)."""
    if snap.bad_key:  # an id no row can have: its audit entry alone
        add_audit(conn, **audit_entry(snap, verdict, entry, None))
        return None
    current = get_base(conn, snap.destination, snap.subscription_id)
    writes = state_writes(snap, verdict, plan_log_id, entry, current)
    put_base(conn, snap.destination, snap.subscription_id, **writes.base)
    if writes.provenance is not None:
        put_provenance(conn, snap.subscription_id, *writes.provenance)
    if writes.supersede:
        supersede_pushes(conn, snap.destination, snap.subscription_id)
    if writes.push is not None:
        add_push(conn, **writes.push)
    conflict_id = entry.conflict_id
    if verdict.outcome == "queued" and conflict_id is None:
        conflict_id = queue_conflict(conn, snap, verdict)
    add_audit(conn, **audit_entry(snap, verdict, entry, conflict_id))
    return conflict_id


@dataclass(frozen=True)
class StateWrites:
    """The rows a decision leaves besides a queued conflict and its audit entry (written one by
    one by `record_decision`, for a whole batch at once by `record_batch.record_decisions`)."""

    base: dict[str, Any]  # `put_base` keywords
    provenance: Provenance | None
    supersede: bool  # the remote holds the result: earlier pending pushes are moot
    push: dict[str, Any] | None  # `add_push` keywords (it supersedes the others itself)


def state_writes(
    snap: Snapshot,
    verdict: Verdict,
    plan_log_id: int,
    entry: Entry,
    current: SyncBase | None,
) -> StateWrites:
    """What recording the decision writes, given the sync base `current`ly stored."""
    feed = _feed_record(snap, current)
    if verdict.applies:
        return _applied_writes(snap, verdict, plan_log_id, entry, feed)
    if verdict.outcome == "echo":  # the remote holds what it held: nothing to merge
        base = {
            "held_record": snap.remote_now,
            "held_version": snap.remote_now_version,
            "agreed_record": current.agreed_record if current else snap.base,
            "log_id": snap.remote_now_log_id,
            "remote_cursor": snap.cursor,
            **feed,
        }
        return StateWrites(base, None, False, None)
    # queued, invalid: the change is handled (recorded), the base stays
    return StateWrites(_kept_base(snap, current, feed), None, False, None)


def _feed_record(snap: Snapshot, current: SyncBase | None) -> dict[str, Any]:
    """The base of the system's next edit of the same image (kept when this record is bad)."""
    if snap.error is None:
        return {"feed_record": snap.remote.record, "feed_version": snap.remote_version}
    return {
        "feed_record": current.feed_record if current else None,
        "feed_version": current.feed_version if current else None,
    }


def _applied_writes(
    snap: Snapshot,
    verdict: Verdict,
    plan_log_id: int,
    entry: Entry,
    feed: Mapping[str, Any],
) -> StateWrites:
    system, ident = snap.destination, snap.subscription_id
    if verdict.push:  # the remote holds what it holds until the push reaches it
        held, log_id = snap.remote_now, snap.remote_now_log_id
    else:
        held, log_id = verdict.target, plan_log_id
    base = {
        "held_record": held,
        "held_version": snap.remote_now_version,
        "agreed_record": verdict.target,
        "log_id": log_id,
        "remote_cursor": snap.cursor,
        **feed,
    }
    if not verdict.push:
        return StateWrites(base, entry.provenance, True, None)
    target = verdict.target
    push = {
        "key": idempotency_key(system, entry.window_key, entry.lsn),
        "destination": system,
        "subscription_id": ident,
        "window_key": entry.window_key,
        "lsn": entry.lsn,
        "record": target,
        "delete_version": None if target is not None else snap.remote_now_version,
        "plan_log_id": plan_log_id,
    }
    return StateWrites(base, entry.provenance, False, push)


def _kept_base(snap: Snapshot, current: SyncBase | None, feed: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "held_record": current.held_record if current else snap.remote.record,
        "held_version": current.held_version if current else snap.remote_version,
        "agreed_record": current.agreed_record if current else snap.base,
        "log_id": current.log_id if current else snap.base_log_id,
        "remote_cursor": snap.cursor,
        **feed,
    }


def queue_conflict(conn: Connection, snap: Snapshot, verdict: Verdict) -> int:
    """Open a conflict, or add this later remote edit to the one already open."""
    system, ident = snap.destination, snap.subscription_id
    open_now = open_conflict(conn, system, ident)
    if open_now is None:
        return add_conflict(
            conn,
            destination=system,
            subscription_id=ident,
            strategy=verdict.strategy,
            fields=verdict.conflicts,
            base=snap.base,
            base_log_id=snap.base_log_id,
            local=snap.local.record,
            local_changed_at=snap.local.changed_at,
            remote=snap.remote.record,
            remote_changed_at=snap.remote.changed_at,
            remote_version=snap.remote_version,
            cursor=snap.cursor,
        )
    remote = _later_remote(open_now.remote, snap.base, snap.remote.record)
    local = loads(dumps(snap.local.record))
    update_conflict_remote(
        conn,
        open_now.id,
        remote=remote,
        remote_changed_at=snap.remote.changed_at,
        remote_version=snap.remote_version,
        cursor=snap.cursor,
        fields=detect(open_now.base, local, remote).conflicts,
    )
    return open_now.id


def _later_remote(
    queued: dict[str, Any] | None,
    base: Mapping[str, Any] | None,
    remote: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """The queued remote side plus what a later remote edit changed against its own base (the
    window delivery may have overwritten the remote meanwhile; its values are not the user's)."""
    if remote is None:
        return None
    later, before = loads(dumps(remote)), loads(dumps(base)) or {}
    if queued is None:
        return dict(later)
    return {**queued, **{k: v for k, v in later.items() if before.get(k, MISSING) != v}}


def audit_entry(
    snap: Snapshot, verdict: Verdict, entry: Entry, conflict_id: int | None
) -> dict[str, Any]:
    """The `add_audit` keywords of one decision."""
    return dict(
        destination=snap.destination,
        subscription_id=audit_id(snap.subscription_id),  # the state tables' length at most
        ref=entry.ref,
        strategy=verdict.strategy,
        outcome=verdict.outcome,
        base=snap.base,
        local=snap.local.record,
        remote=snap.remote.record,
        merged=verdict.target if verdict.applies else None,
        detail={**_audit_detail(snap, verdict), **(entry.note or {})},
        conflict_id=conflict_id,
    )


def _audit_detail(snap: Snapshot, verdict: Verdict) -> dict[str, Any]:
    return {
        "cursor": snap.cursor,
        "local_changed_at": dumps(snap.local.changed_at),
        "remote_changed_at": dumps(snap.remote.changed_at),
        "remote_version": snap.remote_version,
        "conflicts": list(verdict.conflicts),
        "decisions": [d.to_audit_dict() for d in verdict.decisions],
        "write_local": verdict.write_local,
        "push": verdict.push,
        "remote_now": to_jsonable(snap.remote_now),  # what loads(dumps()) gives, without JSON
        "origins": {
            name: {"system": o.system, "changed_at": dumps(o.changed_at)}
            for name, o in sorted(snap.field_origins.items())
        },
        "error": snap.error,
    }


def provenance_of(
    verdict: Verdict, local: Mapping[str, Any] | None, system: str, at: dt.datetime, ignored: Any
) -> Provenance | None:
    """The field values a write-back changes, attributed to `system` at `at`, in the source row
    from the write-back's version on."""
    if not verdict.write_local:
        return None
    if verdict.target is None:
        return {RECORD: None}, system, at, None
    before = local or {}
    changed = {
        name: value
        for name, value in verdict.target.items()
        if name not in ignored and not same(before.get(name, MISSING), value)
    }
    if local is None:
        changed[RECORD] = True
    version = verdict.target.get("version")
    return changed, system, at, version if isinstance(version, int) else None
