"""Applying decisions: write-back, sync base, provenance, pending push, conflict and audit rows,
in the write-back's transaction when the state lives in the source database.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from subscription_export.delivery.clients import RemoteChange, idempotency_key
from subscription_export.delivery.config import DestinationConfig
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.conflicts import RECORD, detect
from subscription_export.reconcile.feeds import FeedBatch
from subscription_export.reconcile.source_side import (
    Types,
    column_types,
    same_database,
    source_writer,
    write_local,
)
from subscription_export.reconcile.strategies import MISSING, ConflictPolicy, same
from subscription_export.reconcile.three_way import (
    OUTCOMES,
    Snapshot,
    Verdict,
    decide,
    load_snapshot,
    reasserted_fields,
)
from subscription_export.runtime import Project
from subscription_export.state.leases import default_holder, lease

CRASH_ENV = "SUBSCRIPTION_EXPORT_RECONCILE_CRASH_AT"
"""Test hook: `after_write_back` or `before_push` makes the process `os._exit(CRASH_EXIT)`."""
CRASH_EXIT = 86


# -- applying ----------------------------------------------------------------------------------


def crash_point(name: str) -> None:
    """Die here if the crash test asks for it (never set outside tests)."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(CRASH_EXIT)


@dataclass
class ApplyReport:
    """Counts of one applied batch; `metadata()` is what the Dagster op reports."""

    system: str
    after: int
    until: int
    outcomes: Counter[str] = field(default_factory=Counter)
    written_back: int = 0
    pushes_planned: int = 0

    def metadata(self) -> dict[str, int | str]:
        return {
            "system": self.system,
            "cursor_from": self.after,
            "cursor_to": self.until,
            "changes": sum(self.outcomes.values()),
            **{f"outcome.{name}": self.outcomes.get(name, 0) for name in OUTCOMES},
            "written_back": self.written_back,
            "pushes_planned": self.pushes_planned,
        }


def state_writes(
    conn: Connection,
    snap: Snapshot,
    verdict: Verdict,
    plan_log_id: int,
    *,
    ref: str,
    window_key: str,
    lsn: int,
    provenance: tuple[Mapping[str, Any], str, dt.datetime] | None,
    conflict_id: int | None = None,
    note: Mapping[str, Any] | None = None,
) -> int | None:
    """Sync base, provenance, pending push, conflict and audit entry of one decision.
    Idempotent: the same decision written twice leaves the same rows."""
    system, ident = snap.destination, snap.subscription_id
    current = st.get_base(conn, system, ident)
    if snap.error is None:  # the base of the system's next edit of the same image
        feed = {"feed_record": snap.remote.record, "feed_version": snap.remote_version}
    else:
        feed = {
            "feed_record": current.feed_record if current else None,
            "feed_version": current.feed_version if current else None,
        }
    if verdict.applies:
        if verdict.push:
            held, held_version, log_id = (
                snap.remote_now,
                snap.remote_now_version,
                snap.remote_now_log_id,
            )
        else:
            held, held_version, log_id = verdict.target, snap.remote_now_version, plan_log_id
        st.put_base(
            conn,
            system,
            ident,
            held_record=held,
            held_version=held_version,
            agreed_record=verdict.target,
            log_id=log_id,
            remote_cursor=snap.cursor,
            **feed,
        )
        if provenance is not None:
            st.put_provenance(conn, ident, *provenance)
        if not verdict.push:  # the remote already holds the result: earlier pushes are moot
            st.supersede_pushes(conn, system, ident)
        if verdict.push:
            target = verdict.target
            st.add_push(
                conn,
                key=idempotency_key(system, window_key, lsn),
                destination=system,
                subscription_id=ident,
                window_key=window_key,
                lsn=lsn,
                record=target,
                delete_version=None if target is not None else snap.remote_now_version,
                plan_log_id=plan_log_id,
            )
    elif verdict.outcome == "echo":  # the remote holds what it held: nothing to merge
        st.put_base(
            conn,
            system,
            ident,
            held_record=snap.remote_now,
            held_version=snap.remote_now_version,
            agreed_record=current.agreed_record if current else snap.base,
            log_id=snap.remote_now_log_id,
            remote_cursor=snap.cursor,
            **feed,
        )
    else:  # queued, invalid: the change is handled (recorded), the base stays
        st.put_base(
            conn,
            system,
            ident,
            held_record=current.held_record if current else snap.remote.record,
            held_version=current.held_version if current else snap.remote_version,
            agreed_record=current.agreed_record if current else snap.base,
            log_id=current.log_id if current else snap.base_log_id,
            remote_cursor=snap.cursor,
            **feed,
        )
    if verdict.outcome == "queued" and conflict_id is None:
        open_now = st.open_conflict(conn, system, ident)
        if open_now is not None:
            conflict_id = open_now.id
            remote = _later_remote(open_now.remote, snap.base, snap.remote.record)
            local = st.loads(st.dumps(snap.local.record))
            st.update_conflict_remote(
                conn,
                conflict_id,
                remote=remote,
                remote_changed_at=snap.remote.changed_at,
                remote_version=snap.remote_version,
                cursor=snap.cursor,
                fields=detect(open_now.base, local, remote).conflicts,
            )
        else:
            conflict_id = st.add_conflict(
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
    st.add_audit(
        conn,
        destination=system,
        subscription_id=ident,
        ref=ref,
        strategy=verdict.strategy,
        outcome=verdict.outcome,
        base=snap.base,
        local=snap.local.record,
        remote=snap.remote.record,
        merged=verdict.target if verdict.applies else None,
        detail={**_audit_detail(snap, verdict), **(note or {})},
        conflict_id=conflict_id,
    )
    return conflict_id


def _later_remote(
    queued: dict[str, Any] | None,
    base: Mapping[str, Any] | None,
    remote: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """The queued remote side plus what a later remote edit changed against its own base (the
    window delivery may have overwritten the remote meanwhile; its values are not the user's)."""
    if remote is None:
        return None
    later, before = st.loads(st.dumps(remote)), st.loads(st.dumps(base)) or {}
    if queued is None:
        return dict(later)
    return {**queued, **{k: v for k, v in later.items() if before.get(k, MISSING) != v}}


def _audit_detail(snap: Snapshot, verdict: Verdict) -> dict[str, Any]:
    return {
        "cursor": snap.cursor,
        "local_changed_at": st.dumps(snap.local.changed_at),
        "remote_changed_at": st.dumps(snap.remote.changed_at),
        "remote_version": snap.remote_version,
        "conflicts": list(verdict.conflicts),
        "decisions": [d.to_audit_dict() for d in verdict.decisions],
        "write_local": verdict.write_local,
        "push": verdict.push,
        "remote_now": st.loads(st.dumps(snap.remote_now)),
        "origins": {
            name: {"system": o.system, "changed_at": st.dumps(o.changed_at)}
            for name, o in sorted(snap.field_origins.items())
        },
        "error": snap.error,
    }


def provenance_of(
    verdict: Verdict, local: Mapping[str, Any] | None, system: str, at: dt.datetime, ignored: Any
) -> tuple[dict[str, Any], str, dt.datetime] | None:
    """The field values a write-back changes, attributed to `system` at `at`."""
    if not verdict.write_local:
        return None
    if verdict.target is None:
        return {RECORD: None}, system, at
    before = local or {}
    changed = {
        name: value
        for name, value in verdict.target.items()
        if name not in ignored and not same(before.get(name, MISSING), value)
    }
    if local is None:
        changed[RECORD] = True
    return changed, system, at


def apply_change(
    project: Project,
    config: DestinationConfig,
    change: RemoteChange,
    policy: ConflictPolicy,
    *,
    types: Types,
) -> Verdict:
    """Decide and apply one feed change (write-back, then state), retrying lost races."""
    for attempt in range(3):
        try:
            return _apply_once(project, config, change, policy, types=types)
        except (sa.exc.IntegrityError, sa.exc.OperationalError):  # lost a race: decide again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _apply_once(
    project: Project,
    config: DestinationConfig,
    change: RemoteChange,
    policy: ConflictPolicy,
    *,
    types: Types,
) -> Verdict:
    together = same_database(project)
    writer = source_writer(project)
    with writer.begin() as conn:
        state = conn if together else project.state.connect()
        try:
            snap = load_snapshot(
                conn,
                state,
                config,
                change,
                types=types,
                ignored=policy.ignored,
                lock=True,
            )
        finally:
            if not together:
                state.close()
        verdict = decide(snap, policy)
        if verdict.outcome == "already_applied":
            return verdict
        plan_log_id = snap.local.log_id
        if verdict.applies and verdict.write_local:
            plan_log_id = write_local(
                conn,
                snap.subscription_id,
                verdict.target,
                snap.local.record is not None,
                types,
                config.name,
            )
        provenance = provenance_of(
            verdict, snap.local.record, config.name, snap.remote.changed_at, policy.ignored
        )
        reasserted = reasserted_fields(snap, verdict, policy)
        if reasserted:
            values = {**reasserted, **(provenance[0] if provenance else {})}
            provenance = (values, config.name, snap.remote.changed_at)
        writes = {
            "ref": f"feed:{change.cursor}",
            "window_key": f"reconcile:{snap.subscription_id}",
            "lsn": change.cursor,
            "provenance": provenance,
        }
        if together:
            state_writes(conn, snap, verdict, plan_log_id, **writes)  # type: ignore[arg-type]
    crash_point("after_write_back")
    if not together:
        # The state is another database: written right after the write-back committed. A crash
        # in between re-decides the same change to the same merged record (see "Crash windows"
        # in the `sync.reconcile` docstring).
        with project.state.begin() as state_conn:
            state_writes(state_conn, snap, verdict, plan_log_id, **writes)  # type: ignore[arg-type]
    return verdict


def apply_batch(
    project: Project,
    config: DestinationConfig,
    batch: FeedBatch,
    policy: ConflictPolicy,
    *,
    holder: str | None = None,
) -> ApplyReport:
    """Apply every change of the batch in feed order, under the system's reconcile lease."""
    st.init_sync_state(project.state)
    report = ApplyReport(config.name, batch.after, batch.until)
    who = holder or default_holder()
    with lease(
        project.state, f"reconcile:{config.name}", who, wait_s=project.settings.lease_wait_s
    ):
        with project.source.connect() as conn:
            types = column_types(conn)
        for change in batch.changes:
            verdict = apply_change(project, config, change, policy, types=types)
            report.outcomes[verdict.outcome] += 1
            report.written_back += int(verdict.applies and verdict.write_local)
            report.pushes_planned += int(verdict.applies and verdict.push)
    return report


def load_snapshots(
    project: Project, config: DestinationConfig, batch: FeedBatch, policy: ConflictPolicy
) -> list[Snapshot]:
    """Every change's snapshot, read without locks and without writing (the job's load step).

    The apply step loads and decides again under the row lock, so a row changed in between is
    decided on fresh data, and a later change of the same subscription sees the write-back of
    an earlier one; these snapshots are what the run reports it planned.
    """
    st.init_sync_state(project.state)
    with project.source.connect() as conn, project.state.connect() as state:
        types = column_types(conn)
        return [
            load_snapshot(
                conn, state, config, change, types=types, ignored=policy.ignored, lock=False
            )
            for change in batch.changes
        ]
