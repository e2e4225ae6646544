"""The decide step (pure, no I/O): what one feed change is decided from (`Snapshot`: base,
local, remote, provenance) and the decision (`decide`): a per-field three-way merge
(`conflicts`) under the destination's policy (`strategies`), each conflicting field decided by
the provenance of its local value (docs/conflicts.md).

The snapshot is read by `snapshot.py`; the verdict is applied by `apply.py`. `LocalState` and
`Origin` live here (they were in `source_side`, which still re-exports them) because deciding
needs them and must not import the I/O modules.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from subscription_export.core.codec import dumps
from subscription_export.core.values import BadValue, convert
from subscription_export.reconcile.conflicts import (
    RECORD,
    Change,
    Decision,
    FieldDiff,
    Outcome,
    detect,
    resolve,
)
from subscription_export.reconcile.errors import ReconcileError
from subscription_export.reconcile.strategies import (
    MISSING,
    SOURCE,
    ConflictPolicy,
    SideState,
    Strategy,
    pick_field,
    same,
)

Take = Literal["local", "remote", "merged"]
MANUAL = ConflictPolicy(Strategy.MANUAL)
OUTCOMES = ("already_applied", "echo", "no_change", "merged", "resolved", "queued", "invalid")
APP_ORIGIN = "app"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# -- what a decision is made from --------------------------------------------------------------


def equivalent(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, ignored: Any) -> bool:
    """Same record apart from bookkeeping (both absent counts as the same)."""
    if a is None or b is None:
        return a is None and b is None
    names = (set(a) | set(b)) - set(ignored)
    return all(same(a.get(n, MISSING), b.get(n, MISSING)) for n in names)


def version_of(record: Mapping[str, Any] | None) -> int | None:
    value = (record or {}).get("version")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_time(value: Any, default: dt.datetime) -> dt.datetime:
    try:
        return convert(value, "timestamp") if value is not None else default  # type: ignore[no-any-return]
    except BadValue:
        return default


def system_of(origin: str) -> str:
    return SOURCE if origin == APP_ORIGIN else origin


@dataclass(frozen=True)
class Origin:
    """Which system produced a value, and when (UTC)."""

    system: str
    changed_at: dt.datetime


@dataclass(frozen=True)
class LocalState:
    """The source's current row (None when deleted or never created) and its bookkeeping."""

    record: dict[str, Any] | None
    changed_at: dt.datetime  # the row's updated_at, or the delete's time
    version: int  # the row's version, or the version it had when deleted (0: never existed)
    log_id: int  # the subscription's newest change-log id (0: none)
    last_origin: str  # origin of that change


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
    # its id is no key of the source table (`ColumnMap.key_error`): nothing was read for it
    # and only its audit entry is recorded (no sync base under an id no row can have)
    bad_key: bool = False
    # Fields only the remote changed whose local value another system asserted after the
    # remote's base (the remote never saw it): decided like conflicts (docs/conflicts.md).
    unseen: Mapping[str, Origin] = field(default_factory=dict)


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
        return _decide_existence(snap, policy)
    return _decide_fields(snap, policy, diff)


def _decide_existence(snap: Snapshot, policy: ConflictPolicy) -> Verdict:
    """One side deleted the record, the other did not: decided for the record as a whole,
    with the system and time that last changed the local side's existence or content."""
    origin = snap.record_origin
    side = SideState(origin.system, origin.changed_at, snap.local.record)
    safe = _safe_policy(policy, origin.system, snap.remote.system)
    res = resolve(snap.base, side, snap.remote, safe)
    if res.outcome is Outcome.QUEUED:
        return Verdict(
            "queued", policy.strategy.value, conflicts=res.conflicts, decisions=res.decisions
        )
    return finish(snap, policy, res.outcome.value, res.merged, res.conflicts, res.decisions)


def _decide_fields(snap: Snapshot, policy: ConflictPolicy, diff: FieldDiff) -> Verdict:
    """Both sides hold the record: one-sided changes merge, contested fields are picked."""
    local = snap.local.record
    assert local is not None
    picks = _picks(snap, policy, diff, local)
    decisions = _decisions(diff, picks)
    if any(d.winner is None for d in picks.values()):
        return Verdict(
            "queued", policy.strategy.value, conflicts=diff.conflicts, decisions=decisions
        )
    outcome = Outcome.RESOLVED if picks else Outcome.MERGED
    merged = _merged(local, diff, picks)
    return finish(snap, policy, outcome.value, merged, tuple(sorted(picks)), decisions)


def _picks(
    snap: Snapshot, policy: ConflictPolicy, diff: FieldDiff, local: dict[str, Any]
) -> dict[str, Decision]:
    """The strategy's pick for every field both sides changed, and for every field only the
    remote changed whose local value another system asserted unseen by the remote."""
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
        reason = f"{pick.reason} (local value from {origin.system} at {dumps(origin.changed_at)})"
        picks[f.field] = Decision(f.field, f.base, f.local, f.remote, pick.winner, reason)
    return picks


def _merged(
    local: dict[str, Any], diff: FieldDiff, picks: Mapping[str, Decision]
) -> dict[str, Any]:
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
    return values


def plan(snapshots: Sequence[Snapshot], policy: ConflictPolicy) -> list[Verdict]:
    """The decisions for a batch, read without locks: what a run plans (the apply step decides
    again under each row's lock)."""
    return [decide(s, policy) for s in snapshots]


def plan_metadata(verdicts: Sequence[Verdict], policy: ConflictPolicy) -> dict[str, int | str]:
    planned = Counter(v.outcome for v in verdicts)
    return {
        "strategy": policy.strategy.value,
        **{f"planned.{name}": planned.get(name, 0) for name in OUTCOMES},
        "planned_write_backs": sum(v.applies and v.write_local for v in verdicts),
        "planned_pushes": sum(v.applies and v.push for v in verdicts),
    }


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


def _decisions(diff: FieldDiff, picks: Mapping[str, Decision]) -> tuple[Decision, ...]:
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


# -- deciding by hand (the manual queue) -------------------------------------------------------


def settle_by_hand(
    snap: Snapshot,
    conflict_id: int,
    fields: Sequence[str],
    take: Take,
    overrides: Mapping[str, Any],
    at: dt.datetime,
) -> Verdict:
    """A person's choice for a queued conflict as a verdict (what to write where), decided
    like a strategy's resolution; a written record is the person's edit, made `at`."""
    target = chosen_record(conflict_id, take, snap.base, snap.local, snap.remote.record, overrides)
    verdict = finish(snap, MANUAL, "resolved", target, tuple(fields), ())
    if verdict.write_local and verdict.target is not None:
        verdict = replace(verdict, target={**verdict.target, "updated_at": at})
    return verdict


def chosen_record(
    conflict_id: int,
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
                f"conflict {conflict_id}: one side deleted the record; take local or remote"
            )
        chosen = local.record if take == "local" else remote
    elif local.record is None:
        chosen = None  # deleted on both sides
    else:
        diff = detect(base, local.record, remote)
        missing = [f for f in diff.conflicts if f not in overrides and f != RECORD]
        if take == "merged" and missing:
            raise ReconcileError(
                f"conflict {conflict_id}: --take merged needs --set for {', '.join(missing)}"
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
            raise ReconcileError(f"conflict {conflict_id}: cannot --set fields of a deletion")
        return None
    return {**chosen, **overrides}
