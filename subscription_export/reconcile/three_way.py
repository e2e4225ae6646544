"""What one feed change is decided from (`Snapshot`: base, local, remote, provenance) and the
decision itself (`decide`, pure): per-field three-way merge under the destination's policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.engine import Connection

from subscription_export.delivery.clients import RemoteChange
from subscription_export.delivery.config import DestinationConfig
from subscription_export.delivery.mapping import MappingError
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.conflicts import (
    RECORD,
    Change,
    Decision,
    Outcome,
    detect,
    resolve,
)
from subscription_export.reconcile.feeds import remote_fields
from subscription_export.reconcile.source_side import (
    EPOCH,
    LocalState,
    Origin,
    Types,
    as_time,
    changed_after,
    equivalent,
    field_times,
    image_by_version,
    normalize,
    read_local,
    system_of,
    version_of,
)
from subscription_export.reconcile.strategies import (
    MISSING,
    SOURCE,
    ConflictPolicy,
    SideState,
    Strategy,
    pick_field,
    same,
)

OUTCOMES = ("already_applied", "echo", "no_change", "merged", "resolved", "queued", "invalid")


# -- snapshot: what a decision is made from ----------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything one feed change is decided from (all values typed)."""

    destination: str
    subscription_id: str
    cursor: int
    base: dict[str, Any] | None
    base_log_id: int
    local: LocalState
    remote: SideState
    remote_version: int | None
    remote_now: dict[str, Any] | None  # what the remote holds now, as far as we know
    remote_now_version: int | None
    remote_now_log_id: int
    field_origins: Mapping[str, Origin]  # of local values changed since the base
    record_origin: Origin  # of the local side's existence change / latest edit
    already_applied: bool = False
    open_conflict_id: int | None = None
    error: str | None = None  # the feed record could not be read
    # Fields only the remote changed whose local value another system asserted after the
    # remote's base (the remote never saw it): decided like conflicts (docs/conflicts.md).
    unseen: Mapping[str, Origin] = field(default_factory=dict)


def _remote_side(
    config: DestinationConfig, change: RemoteChange, types: Types
) -> tuple[SideState, int | None, str | None]:
    try:
        fields = normalize(remote_fields(config, change), types, strict=True) or {}
    except MappingError as exc:
        return SideState(config.name, change.updated_at, None), None, str(exc)
    version = version_of(fields)
    record = None if change.op == "delete" else fields
    return SideState(config.name, change.updated_at, record), version, None


def load_snapshot(
    conn: Connection,
    state: Connection,
    config: DestinationConfig,
    change: RemoteChange,
    *,
    types: Types,
    ignored: frozenset[str],
    lock: bool,
) -> Snapshot:
    """Base, local row and remote state of one feed change (`conn`: source, `state`: state).

    `remote_now` is what the remote holds, or will hold once the window delivery has sent it
    every change made since its base: of the feed record, the newest such change and what we
    last left there (`held_*`), the one with the highest version (our writes carry ever higher
    versions and the systems refuse older ones; a user's edit keeps the version of the image it
    was made on). A decision must make *that* equal to the merged record, not the feed record
    alone: a push sent after this edit was made may have replaced it.
    """
    system, ident = config.name, change.id
    local = read_local(conn, ident, types, lock)
    remote, remote_version, error = _remote_side(config, change, types)
    base_row = st.get_base(state, system, ident)
    done = base_row is not None and base_row.remote_cursor >= change.cursor
    base, base_log_id = _base_for(conn, ident, base_row, remote_version, types)
    if remote.record is not None and base is not None:  # fields the remote does not store
        remote = replace(remote, record={**base, **remote.record})
    sent = changed_after(conn, ident, base_log_id, system, types)
    if sent is not None:
        now_record, now_version, now_log = sent.record, sent.version, sent.id
    else:
        now_record, now_version, now_log = remote.record, remote_version, base_log_id
    if (
        base_row is not None
        and base_row.held_version is not None
        and remote_version is not None
        and base_row.held_version > max(remote_version, now_version or 0)
    ):  # we wrote a newer image there after this edit was made
        now_record = normalize(base_row.held_record, types)
        now_version, now_log = base_row.held_version, base_row.log_id
    field_origins, record_origin = _origins(conn, state, ident, base, local, remote, ignored, types)
    unseen = _unseen(state, ident, system, base, local, remote, ignored)
    conflict = st.open_conflict(state, system, ident)
    return Snapshot(
        destination=system,
        subscription_id=ident,
        cursor=change.cursor,
        base=base,
        base_log_id=base_log_id,
        local=local,
        remote=remote,
        remote_version=remote_version,
        remote_now=now_record,
        remote_now_version=now_version,
        remote_now_log_id=now_log,
        field_origins=field_origins,
        record_origin=record_origin,
        already_applied=done,
        open_conflict_id=conflict.id if conflict else None,
        error=error,
        unseen=unseen,
    )


def _unseen(
    state: Connection,
    ident: str,
    system: str,
    base: dict[str, Any] | None,
    local: LocalState,
    remote: SideState,
    ignored: frozenset[str],
) -> dict[str, Origin]:
    """Fields the remote alone changed, whose local value (equal to the base's) was set again by
    another remote system after the remote's base was made (its `updated_at`): that system's
    edit is concurrent with this one although it left the value as it was."""
    if base is None or local.record is None or remote.record is None:
        return {}
    names = [
        f.field for f in detect(base, local.record, remote.record, ignored).of(Change.REMOTE_ONLY)
    ]
    if not names:
        return {}
    recorded = st.get_provenance(state, ident)
    seen_at = as_time(base.get("updated_at"), EPOCH)
    out: dict[str, Origin] = {}
    for name in names:
        prov = recorded.get(name)
        value = local.record.get(name, MISSING)
        if prov is None or value is MISSING or prov.system in (SOURCE, system):
            continue
        if st.dumps(prov.value) == st.dumps(value) and prov.changed_at > seen_at:
            out[name] = Origin(prov.system, prov.changed_at)
    return out


def _base_for(
    conn: Connection,
    ident: str,
    row: st.SyncBase | None,
    version: int | None,
    types: Types,
) -> tuple[dict[str, Any] | None, int]:
    """The image the remote's user edited: the system's previous feed record if it carries
    the same version (two edits of one image in a row: the second was made on the first),
    else what the remote held after our last decision if the versions match, else the
    change-log image with that version (delivered to it), else the last held state, else
    nothing (the record is new to us)."""
    if (
        row is not None
        and version is not None
        and row.feed_version == version
        and row.feed_record is not None
    ):
        image = image_by_version(conn, ident, version, types)
        return normalize(row.feed_record, types), image.id if image else row.log_id
    held = row is not None and row.held_record is not None  # nobody edits a deleted record
    if held and version is not None and row.held_version == version:  # type: ignore[union-attr]
        return normalize(row.held_record, types), row.log_id  # type: ignore[union-attr]
    if version is not None:
        image = image_by_version(conn, ident, version, types)
        if image is not None:
            return image.record, image.id
    if row is not None:
        return normalize(row.held_record, types), row.log_id
    return None, 0


def _origins(
    conn: Connection,
    state: Connection,
    ident: str,
    base: dict[str, Any] | None,
    local: LocalState,
    remote: SideState,
    ignored: frozenset[str],
    types: Types,
) -> tuple[dict[str, Origin], Origin]:
    diff = detect(base, local.record, remote.record, ignored)
    mine = (Change.LOCAL_ONLY, Change.BOTH_SAME, Change.BOTH_DIFFERENT)
    changed = [f.field for f in diff.of(*mine)]
    recorded = st.get_provenance(state, ident)
    origins: dict[str, Origin] = {}
    todo = []
    for name in changed:
        prov = recorded.get(name)
        value = (local.record or {}).get(name, MISSING)
        if prov is not None and value is not MISSING and st.dumps(prov.value) == st.dumps(value):
            origins[name] = Origin(prov.system, prov.changed_at)
        else:
            todo.append(name)
    if todo and local.record is not None:
        origins.update(field_times(conn, ident, todo, local.changed_at, types))
    if local.record is None:
        prov = recorded.get(RECORD)  # a write-back delete: the remote's time, not ours
        if prov is not None and prov.value is None and prov.system == local.last_origin:
            return origins, Origin(prov.system, prov.changed_at)
        return origins, Origin(system_of(local.last_origin), local.changed_at)
    if not origins:
        return origins, Origin(SOURCE, local.changed_at)
    latest = max(origins.values(), key=lambda o: (o.changed_at, o.system))
    ours = [o for o in origins.values() if o.system == SOURCE]
    return origins, Origin(SOURCE, latest.changed_at) if ours else latest


# -- deciding ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What to do about one feed change."""

    outcome: str  # one of OUTCOMES
    strategy: str
    target: dict[str, Any] | None = None  # the merged record (None: deleted)
    write_local: bool = False
    push: bool = False
    conflicts: tuple[str, ...] = ()
    decisions: tuple[Decision, ...] = ()

    @property
    def applies(self) -> bool:
        return self.outcome in ("no_change", "merged", "resolved")


def _safe_policy(policy: ConflictPolicy, local_system: str, remote_system: str) -> ConflictPolicy:
    """`source_wins`/`remote_wins` only rank the source against a remote; between two remotes
    (a local value that came from another system) they fall back to `last_writer_wins`."""
    if SOURCE in (local_system, remote_system):
        return policy
    by_source = {Strategy.SOURCE_WINS, Strategy.REMOTE_WINS}
    if policy.strategy in by_source:
        return ConflictPolicy(
            Strategy.LAST_WRITER_WINS, priority=policy.priority, ignored=policy.ignored
        )
    if policy.strategy is Strategy.FIELD_OWNERSHIP and policy.fallback in by_source:
        return replace(policy, fallback=Strategy.LAST_WRITER_WINS)
    return policy


def _effective(
    policy: ConflictPolicy, name: str, local_system: str, remote_system: str
) -> Strategy:
    strategy = policy.strategy
    if strategy is Strategy.FIELD_OWNERSHIP:
        owner = policy.field_owners.get(name)
        if owner is not None and (local_system == owner) != (remote_system == owner):
            return strategy
        strategy = policy.fallback
    if strategy in (Strategy.SOURCE_WINS, Strategy.REMOTE_WINS) and SOURCE not in (
        local_system,
        remote_system,
    ):
        return Strategy.LAST_WRITER_WINS
    return strategy


def decide(snap: Snapshot, policy: ConflictPolicy) -> Verdict:
    """The decision for one feed change (pure; docs/conflicts.md has the rules)."""
    strategy = policy.strategy.value
    if snap.already_applied:
        return Verdict("already_applied", strategy)
    if snap.error is not None:
        return Verdict("invalid", strategy)
    base, local, remote = snap.base, snap.local.record, snap.remote.record
    diff = detect(base, local, remote, policy.ignored)
    if snap.open_conflict_id is not None:
        return Verdict("queued", strategy, conflicts=diff.conflicts or (RECORD,))
    if base is not None and equivalent(remote, base, policy.ignored):
        return Verdict("echo", strategy)
    if diff.sides_agree:
        return finish(snap, policy, "no_change", local, (), ())
    if (local is None) != (remote is None):
        origin = snap.record_origin
        side = SideState(origin.system, origin.changed_at, local)
        res = resolve(
            base, side, snap.remote, _safe_policy(policy, origin.system, snap.remote.system)
        )
        if res.outcome is Outcome.QUEUED:
            return Verdict("queued", strategy, conflicts=res.conflicts, decisions=res.decisions)
        return finish(snap, policy, res.outcome.value, res.merged, res.conflicts, res.decisions)
    assert local is not None and remote is not None
    picks: dict[str, Decision] = {}
    contested = [] if policy.strategy is Strategy.MANUAL else list(snap.unseen)
    for f in diff.fields:
        if f.change is Change.BOTH_DIFFERENT:
            origin = snap.field_origins.get(f.field, Origin(SOURCE, snap.local.changed_at))
        elif f.change is Change.REMOTE_ONLY and f.field in contested:
            origin = snap.unseen[f.field]
        else:
            continue
        side = SideState(origin.system, origin.changed_at, local)
        chosen = _effective(policy, f.field, origin.system, snap.remote.system)
        pick = pick_field(policy, f.field, side, snap.remote, f.local, f.remote, chosen)
        reason = (
            f"{pick.reason} (local value from {origin.system} at {st.dumps(origin.changed_at)})"
        )
        picks[f.field] = Decision(f.field, f.base, f.local, f.remote, pick.winner, reason)
    decisions = _decisions(diff, picks)
    if any(d.winner is None for d in picks.values()):
        return Verdict("queued", strategy, conflicts=diff.conflicts, decisions=decisions)
    values: dict[str, Any] = dict(local)
    for f in diff.fields:
        won = picks.get(f.field)
        if won is not None:
            value = f.remote if won.winner == "remote" else f.local
        else:
            value = f.remote if f.change is Change.REMOTE_ONLY else f.local
        if value is MISSING:
            values.pop(f.field, None)
        else:
            values[f.field] = value
    outcome = Outcome.RESOLVED if picks else Outcome.MERGED
    conflicts = tuple(sorted(picks))
    return finish(snap, policy, outcome.value, values, conflicts, decisions)


def reasserted_fields(snap: Snapshot, verdict: Verdict, policy: ConflictPolicy) -> dict[str, Any]:
    """Fields the remote set to the value the source already had, where the remote's claim is
    stronger than the one recorded for the local value (the remote would have won had the
    values differed: later, higher priority, owner, or a remote under `remote_wins`). The
    remote becomes the field's recorded writer, so the outcome does not depend on whether its
    edit arrived before or after a competing one (`Snapshot.unseen` uses it too)."""
    local, remote = snap.local.record, snap.remote.record
    if not verdict.applies or local is None or remote is None or verdict.target is None:
        return {}
    out: dict[str, Any] = {}
    for f in detect(snap.base, local, remote, policy.ignored).of(Change.BOTH_SAME):
        if f.local is MISSING or not same(verdict.target.get(f.field, MISSING), f.local):
            continue
        origin = snap.field_origins.get(f.field, Origin(SOURCE, snap.local.changed_at))
        if origin.system == snap.remote.system:
            stronger = snap.remote.changed_at > origin.changed_at
        else:
            chosen = _effective(policy, f.field, origin.system, snap.remote.system)
            if chosen is Strategy.MANUAL:
                continue
            side = SideState(origin.system, origin.changed_at, local)
            pick = pick_field(policy, f.field, side, snap.remote, f.local, f.remote, chosen)
            stronger = pick.winner == "remote"
        if stronger:
            out[f.field] = f.local
    return out


def _decisions(diff: Any, picks: Mapping[str, Decision]) -> tuple[Decision, ...]:
    reasons = {
        Change.BOTH_SAME: ("both", "both sides made the same change"),
        Change.LOCAL_ONLY: ("local", "changed on local side only"),
        Change.REMOTE_ONLY: ("remote", "changed on remote side only"),
    }
    out = []
    for f in diff.fields:
        if f.change is Change.UNCHANGED:
            continue
        if f.field in picks:
            out.append(picks[f.field])
        else:
            winner, reason = reasons[f.change]
            out.append(Decision(f.field, f.base, f.local, f.remote, winner, reason))  # type: ignore[arg-type]
    return tuple(out)


def finish(
    snap: Snapshot,
    policy: ConflictPolicy,
    outcome: str,
    merged: Mapping[str, Any] | None,
    conflicts: tuple[str, ...],
    decisions: tuple[Decision, ...],
) -> Verdict:
    """Bookkeeping of the merged record, and which sides must be written."""
    local = snap.local.record
    if merged is not None and equivalent(merged, local, policy.ignored):
        target: dict[str, Any] | None = dict(local)  # type: ignore[arg-type]
        write = False
    elif merged is None:
        target, write = None, local is not None
    else:
        target = dict(merged)
        stamps = [snap.remote.changed_at]
        if local is not None:
            stamps.append(as_time(local.get("updated_at"), snap.local.changed_at))
        target["updated_at"] = max(stamps)
        versions = [snap.local.version, snap.remote_version or 0, snap.remote_now_version or 0]
        target["version"] = max([*versions, version_of(snap.base) or 0]) + 1
        write = True
    push = not equivalent(target, snap.remote_now, policy.ignored)
    return Verdict(outcome, policy.strategy.value, target, write, push, conflicts, decisions)
