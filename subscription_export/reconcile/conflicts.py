"""Three-way conflict detection and resolution for bidirectional sync (pure, no I/O).

For each (destination, subscription) the sync keeps the last state both sides agreed on, the
*base*. A reconcile compares base, local and remote field by field:

* a field changed on one side only merges, whatever the strategy, so an undisputed edit is
  never lost;
* a field both sides changed to the same value is agreement, not a conflict;
* a field both sides changed to different values goes to the policy's strategy
  (see `strategies` for the rules table; docs/conflicts.md has the same table).

Records are dicts of field -> value, or None when deleted (or never created) on that side. A
field absent from a record is `MISSING`, which differs from a null value: callers should pass
each system's records projected onto the fields that system stores. The bookkeeping fields in
`ConflictPolicy.ignored` (`updated_at`, `version`) are never compared; the merged record takes
them from the later writer.

The result is a function of the inputs only, never of which side is passed as local: the
strategies decide by system identity and UTC time, and exact ties by a stable value order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from subscription_export.core.codec import to_jsonable
from subscription_export.reconcile.strategies import (
    DEFAULT_IGNORED,
    DEFAULT_PRIORITY,
    LIFECYCLE_FIELD,
    MISSING,
    SOURCE,
    ConflictPolicy,
    Pick,
    Record,
    Role,
    SideState,
    Strategy,
    last_writer,
    pick_delete,
    pick_field,
    same,
)

__all__ = [
    "DEFAULT_IGNORED",
    "DEFAULT_PRIORITY",
    "LIFECYCLE_FIELD",
    "MISSING",
    "RECORD",
    "SOURCE",
    "Apply",
    "Change",
    "ConflictPolicy",
    "Decision",
    "FieldChange",
    "FieldDiff",
    "Outcome",
    "Resolution",
    "SideState",
    "Strategy",
    "detect",
    "resolve",
]

RECORD = "*"
"""The `field` of a decision about the record's existence (create, delete, delete vs update)."""


class Change(StrEnum):
    UNCHANGED = "unchanged"
    LOCAL_ONLY = "local_only"
    REMOTE_ONLY = "remote_only"
    BOTH_SAME = "both_same"
    BOTH_DIFFERENT = "both_different"


class Outcome(StrEnum):
    NO_CHANGE = "no_change"  # the sides already agree: nothing to write (store merged as base)
    MERGED = "merged"  # only one-sided changes (or agreement): merged without a conflict
    RESOLVED = "resolved"  # at least one conflict, settled by the strategy
    QUEUED = "queued"  # conflict left to a human (manual): nothing applied


@dataclass(frozen=True)
class FieldChange:
    field: str
    change: Change
    base: Any
    local: Any
    remote: Any


@dataclass(frozen=True)
class FieldDiff:
    """Per-field three-way classification; `fields` covers every compared field, by name."""

    base_exists: bool
    local_exists: bool
    remote_exists: bool
    fields: tuple[FieldChange, ...]
    ignored: frozenset[str]

    def of(self, *changes: Change) -> tuple[FieldChange, ...]:
        return tuple(f for f in self.fields if f.change in changes)

    @property
    def conflicts(self) -> tuple[str, ...]:
        return tuple(f.field for f in self.of(Change.BOTH_DIFFERENT))

    def changed(self, role: Role) -> bool:
        """Whether `role` differs from the base (existence or any compared field)."""
        exists = self.local_exists if role == "local" else self.remote_exists
        own = Change.LOCAL_ONLY if role == "local" else Change.REMOTE_ONLY
        both = (Change.BOTH_SAME, Change.BOTH_DIFFERENT)
        return exists != self.base_exists or bool(self.of(own, *both))

    @property
    def sides_agree(self) -> bool:
        return self.local_exists == self.remote_exists and not self.of(
            Change.LOCAL_ONLY, Change.REMOTE_ONLY, Change.BOTH_DIFFERENT
        )


def detect(
    base: Record | None,
    local: Record | None,
    remote: Record | None,
    ignore: frozenset[str] | set[str] = DEFAULT_IGNORED,
) -> FieldDiff:
    """Classify every field of the three records; a deleted record has every field MISSING."""
    b, lo, re = base or {}, local or {}, remote or {}
    fields = []
    for name in sorted((set(b) | set(lo) | set(re)) - set(ignore)):
        bv, lv, rv = b.get(name, MISSING), lo.get(name, MISSING), re.get(name, MISSING)
        # `same`'s first test inline (three calls a field, every field, ~3 diffs an edit)
        local_changed = not (type(bv) is type(lv) and bv == lv) and not same(bv, lv)
        remote_changed = not (type(bv) is type(rv) and bv == rv) and not same(bv, rv)
        if local_changed and remote_changed:
            change = Change.BOTH_SAME if same(lv, rv) else Change.BOTH_DIFFERENT
        elif local_changed:
            change = Change.LOCAL_ONLY
        elif remote_changed:
            change = Change.REMOTE_ONLY
        else:
            change = Change.UNCHANGED
        fields.append(FieldChange(name, change, bv, lv, rv))
    return FieldDiff(
        base_exists=base is not None,
        local_exists=local is not None,
        remote_exists=remote is not None,
        fields=tuple(fields),
        ignored=frozenset(ignore),
    )


# -- resolution --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One audit-log line: which version of `field` won and why. `winner` is None if queued."""

    field: str
    base: Any
    local: Any
    remote: Any
    winner: Literal["local", "remote", "both"] | None
    reason: str

    def to_audit_dict(self) -> dict[str, Any]:
        """JSON-ready; an absent value (MISSING) is an absent key, so it differs from null."""
        out: dict[str, Any] = {"field": self.field}
        for key in ("base", "local", "remote"):
            value = getattr(self, key)
            if value is not MISSING:
                out[key] = to_jsonable(value)
        out["winner"] = self.winner
        out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class Apply:
    """A write one side needs so that it holds the merged state."""

    op: Literal["upsert", "delete"]
    record: dict[str, Any] | None = None


@dataclass(frozen=True)
class Resolution:
    """The merged state, how it was reached, and the writes that make both sides hold it.

    `merged` is None when the record ends deleted, and also when the outcome is `queued`
    (nothing was decided). The caller stores `merged` as the new base after applying.
    """

    outcome: Outcome
    merged: dict[str, Any] | None
    decisions: tuple[Decision, ...]
    conflicts: tuple[str, ...]
    apply_local: Apply | None
    apply_remote: Apply | None
    strategy: Strategy
    local: SideState
    remote: SideState

    @property
    def deleted(self) -> bool:
        return self.outcome is not Outcome.QUEUED and self.merged is None

    def to_audit_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "strategy": self.strategy.value,
            "local_system": self.local.system,
            "local_changed_at": to_jsonable(self.local.changed_at),
            "remote_system": self.remote.system,
            "remote_changed_at": to_jsonable(self.remote.changed_at),
            "conflicts": list(self.conflicts),
            "merged": to_jsonable(self.merged),
            "apply_local": _apply_dict(self.apply_local),
            "apply_remote": _apply_dict(self.apply_remote),
            "decisions": [d.to_audit_dict() for d in self.decisions],
        }


def resolve(
    base: Record | None, local: SideState, remote: SideState, policy: ConflictPolicy
) -> Resolution:
    """Merge `local` and `remote` against their last agreed `base` under `policy`."""
    policy.check_sides(local, remote)
    diff = detect(base, local.record, remote.record, policy.ignored)
    if diff.sides_agree:
        merged = _with_bookkeeping(_pick_values(diff), local, remote, policy)
        reason = "deleted on both sides" if base is not None else "absent on both sides"
        decisions = (
            _decisions(diff, {})
            if merged is not None
            else (Decision(RECORD, base, None, None, "both", reason),)
        )
        return _result(Outcome.NO_CHANGE, merged, decisions, (), local, remote, policy)
    if local.deleted != remote.deleted:
        return _resolve_existence(base, diff, local, remote, policy)
    return _resolve_fields(diff, local, remote, policy)


def _resolve_existence(
    base: Record | None,
    diff: FieldDiff,
    local: SideState,
    remote: SideState,
    policy: ConflictPolicy,
) -> Resolution:
    """Exactly one side holds the record: a create, a one-sided delete, or delete vs update."""
    present: Role = "remote" if local.deleted else "local"
    absent: Role = "local" if present == "remote" else "remote"
    present_side = local if present == "local" else remote
    absent_side = remote if present == "local" else local
    if base is None:
        pick, conflicts = Pick(present, f"created on {present_side.system}"), ()
    elif not diff.changed(present):
        pick, conflicts = Pick(absent, f"deleted on {absent_side.system}, other side unchanged"), ()
    else:
        pick, conflicts = pick_delete(policy, local, remote), (RECORD,)
    decision = Decision(RECORD, base, local.record, remote.record, pick.winner, pick.reason)
    if pick.winner is None:
        return _result(Outcome.QUEUED, None, (decision,), conflicts, local, remote, policy)
    merged = present_side.record if pick.winner == present else None
    outcome = Outcome.RESOLVED if conflicts else Outcome.MERGED
    return _result(outcome, merged, (decision,), conflicts, local, remote, policy)


def _resolve_fields(
    diff: FieldDiff, local: SideState, remote: SideState, policy: ConflictPolicy
) -> Resolution:
    """Both sides hold the record: merge one-sided fields, let the strategy settle the rest."""
    picks = {
        f.field: pick_field(policy, f.field, local, remote, f.local, f.remote)
        for f in diff.of(Change.BOTH_DIFFERENT)
    }
    decisions = _decisions(diff, picks)
    if any(p.winner is None for p in picks.values()):
        return _result(Outcome.QUEUED, None, decisions, diff.conflicts, local, remote, policy)
    merged = _with_bookkeeping(_pick_values(diff, picks), local, remote, policy)
    outcome = Outcome.RESOLVED if picks else Outcome.MERGED
    return _result(outcome, merged, decisions, diff.conflicts, local, remote, policy)


def _pick_values(diff: FieldDiff, picks: Mapping[str, Pick] | None = None) -> dict[str, Any]:
    picks = picks or {}
    values: dict[str, Any] = {}
    for f in diff.fields:
        pick = picks.get(f.field)
        if f.change is Change.REMOTE_ONLY or (pick is not None and pick.winner == "remote"):
            value = f.remote
        else:
            value = f.local
        if value is not MISSING:
            values[f.field] = value
    return values


def _with_bookkeeping(
    values: dict[str, Any], local: SideState, remote: SideState, policy: ConflictPolicy
) -> dict[str, Any] | None:
    """Add ignored fields from the later writer (None when the record is deleted on both)."""
    if local.deleted and remote.deleted:
        return None
    lrec, rrec = local.record or {}, remote.record or {}
    for name in sorted((set(lrec) | set(rrec)) & policy.ignored):
        lv, rv = lrec.get(name, MISSING), rrec.get(name, MISSING)
        if lv is MISSING or rv is MISSING:
            values[name] = rv if lv is MISSING else lv
        else:
            values[name] = (
                lv if last_writer(policy, local, remote, lv, rv).winner == "local" else rv
            )
    return values


def _decisions(diff: FieldDiff, picks: Mapping[str, Pick]) -> tuple[Decision, ...]:
    out = []
    for f in diff.fields:
        if f.change is Change.UNCHANGED:
            continue
        if f.change is Change.BOTH_DIFFERENT:
            winner, reason = picks[f.field].winner, picks[f.field].reason
        elif f.change is Change.BOTH_SAME:
            winner, reason = "both", "both sides made the same change"
        elif f.change is Change.LOCAL_ONLY:
            winner, reason = "local", "changed on local side only"
        else:
            winner, reason = "remote", "changed on remote side only"
        out.append(Decision(f.field, f.base, f.local, f.remote, winner, reason))
    return tuple(out)


def _result(
    outcome: Outcome,
    merged: Record | None,
    decisions: tuple[Decision, ...],
    conflicts: tuple[str, ...],
    local: SideState,
    remote: SideState,
    policy: ConflictPolicy,
) -> Resolution:
    merged = None if merged is None else dict(merged)
    apply_local = apply_remote = None
    if outcome is not Outcome.QUEUED:
        apply_local = _apply(merged, local.record, policy.ignored)
        apply_remote = _apply(merged, remote.record, policy.ignored)
    return Resolution(
        outcome,
        merged,
        decisions,
        conflicts,
        apply_local,
        apply_remote,
        policy.strategy,
        local,
        remote,
    )


def _apply(
    merged: dict[str, Any] | None, current: Record | None, ignored: frozenset[str]
) -> Apply | None:
    """The write that brings `current` to `merged`; None when they differ only in bookkeeping
    (writing then would only bump `version` and echo back as a new change)."""
    if merged is None:
        return None if current is None else Apply("delete")
    if current is not None and _equivalent(merged, current, ignored):
        return None
    return Apply("upsert", dict(merged))


def _equivalent(a: Record, b: Record, ignored: frozenset[str]) -> bool:
    names = (set(a) | set(b)) - ignored
    return all(same(a.get(n, MISSING), b.get(n, MISSING)) for n in names)


def _apply_dict(write: Apply | None) -> dict[str, Any] | None:
    return None if write is None else {"op": write.op, "record": to_jsonable(write.record)}
