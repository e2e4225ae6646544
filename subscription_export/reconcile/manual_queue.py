"""The manual queue: settle a queued conflict (`--take local|remote|merged`, `--set`) through the
same apply path as the job, and read the audit log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from subscription_export.core.values import BadValue, convert
from subscription_export.delivery.clients import DeliveryClient
from subscription_export.delivery.config import DestinationsConfig
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.apply import crash_point, provenance_of, state_writes
from subscription_export.reconcile.conflicts import RECORD, Change, detect
from subscription_export.reconcile.feeds import ReconcileError, feed_system
from subscription_export.reconcile.pushes import PushReport, push_pending
from subscription_export.reconcile.source_side import (
    LocalState,
    Origin,
    Types,
    changed_after,
    column_types,
    normalize,
    read_local,
    same_database,
    source_writer,
    write_local,
)
from subscription_export.reconcile.strategies import (
    MISSING,
    SOURCE,
    ConflictPolicy,
    SideState,
    Strategy,
)
from subscription_export.reconcile.three_way import Snapshot, finish
from subscription_export.runtime import Project

Take = Literal["local", "remote", "merged"]


# -- the manual queue --------------------------------------------------------------------------


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
    st.init_sync_state(project.state)
    conflict = st.get_conflict(project.state, conflict_id)
    if conflict is None:
        raise ReconcileError(f"no conflict {conflict_id}; see `subscription-export conflicts list`")
    if conflict.status != "open":
        raise ReconcileError(f"conflict {conflict_id} is already {conflict.status}")
    config = feed_system(destinations, conflict.destination)
    together = same_database(project)
    with source_writer(project).begin() as conn:
        types = column_types(conn)
        overrides = parse_sets(sets, types)
        local = read_local(conn, conflict.subscription_id, types, lock=True)
        base = normalize(conflict.base, types)
        remote = normalize(conflict.remote, types)
        target = _taken(conflict, take, base, local, remote, overrides)
        sent = changed_after(
            conn, conflict.subscription_id, conflict.base_log_id, config.name, types
        )
        remote_now = sent.record if sent else remote
        remote_now_version = sent.version if sent else conflict.remote_version
        snap = Snapshot(
            destination=config.name,
            subscription_id=conflict.subscription_id,
            cursor=0,
            base=base,
            base_log_id=conflict.base_log_id,
            local=local,
            remote=SideState(config.name, conflict.remote_changed_at, remote),
            remote_version=conflict.remote_version,
            remote_now=remote_now,
            remote_now_version=remote_now_version,
            remote_now_log_id=sent.id if sent else conflict.base_log_id,
            field_origins={},
            record_origin=Origin(SOURCE, st.now()),
        )
        policy = ConflictPolicy(Strategy.MANUAL)
        verdict = finish(snap, policy, "resolved", target, tuple(conflict.fields), ())
        if verdict.write_local and verdict.target is not None:  # a person's edit, made now
            verdict = replace(verdict, target={**verdict.target, "updated_at": st.now()})
        plan_log_id = local.log_id
        if verdict.write_local:
            plan_log_id = write_local(
                conn,
                conflict.subscription_id,
                verdict.target,
                local.record is not None,
                types,
                config.name,
            )
        provenance = provenance_of(verdict, local.record, SOURCE, st.now(), policy.ignored)
        writes: dict[str, Any] = {
            "ref": f"conflict:{conflict_id}",
            "window_key": f"resolve:{conflict.subscription_id}",
            "lsn": conflict_id,
            "provenance": provenance,
            "conflict_id": conflict_id,
        }
        resolution = {"take": take, "set": sorted(overrides), "final": verdict.target}
        writes["note"] = {"take": take, "set": st.loads(st.dumps(overrides))}
        if together:
            state_writes(conn, snap, verdict, plan_log_id, **writes)
            st.close_conflict(conn, conflict_id, resolution)
    crash_point("after_write_back")
    if not together:
        with project.state.begin() as state_conn:
            state_writes(state_conn, snap, verdict, plan_log_id, **writes)
            st.close_conflict(state_conn, conflict_id, resolution)
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


def _taken(
    conflict: st.Conflict,
    take: Take,
    base: dict[str, Any] | None,
    local: LocalState,
    remote: dict[str, Any] | None,
    overrides: Mapping[str, Any],
) -> dict[str, Any] | None:
    """The record a person chose. Fields changed on one side only merge as always; the
    conflicting fields take the local value (`local`), the remote's (`remote`) or the value
    given by `--set` (`merged`). When one side deleted the record, `local`/`remote` take that
    side's version (the record or its deletion) and `merged` is refused."""
    if take not in ("local", "remote", "merged"):
        raise ReconcileError(f"--take {take!r}: choose local, remote or merged")
    chosen: dict[str, Any] | None
    if (local.record is None) != (remote is None):
        if take == "merged":
            raise ReconcileError(
                f"conflict {conflict.id}: one side deleted the record; take local or remote"
            )
        chosen = local.record if take == "local" else remote
    elif local.record is None:
        chosen = None  # deleted on both sides
    else:
        diff = detect(base, local.record, remote)
        missing = [f for f in diff.conflicts if f not in overrides and f != RECORD]
        if take == "merged" and missing:
            raise ReconcileError(
                f"conflict {conflict.id}: --take merged needs --set for {', '.join(missing)}"
            )
        chosen = dict(local.record)
        for f in diff.fields:
            from_remote = f.change is Change.REMOTE_ONLY or (
                f.change is Change.BOTH_DIFFERENT and take == "remote"
            )
            if not from_remote:
                continue
            if f.remote is MISSING:
                chosen.pop(f.field, None)
            else:
                chosen[f.field] = f.remote
    if chosen is None:
        if overrides:
            raise ReconcileError(f"conflict {conflict.id}: cannot --set fields of a deletion")
        return None
    return {**chosen, **overrides}


def describe_conflict(conflict: st.Conflict) -> dict[str, Any]:
    """JSON-ready view for `conflicts show`."""
    out = dict(conflict.__dict__)
    for key in ("local_changed_at", "remote_changed_at", "created_at", "updated_at", "resolved_at"):
        out[key] = st.loads(st.dumps(out[key]))
    return out


def history(project: Project, subscription_id: str) -> list[dict[str, Any]]:
    """Every decision about a subscription, oldest first (for `conflicts history`)."""
    st.init_sync_state(project.state)
    return [entry.to_dict() for entry in st.history(project.state, subscription_id)]
