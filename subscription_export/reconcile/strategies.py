"""Conflict strategies: who wins a field (or a delete) that both sides changed since the base.

Only both-sided changes reach this module; `conflicts.resolve` merges one-sided changes itself,
so no strategy can ever drop an edit that nobody disputed.

Every rule is decided by *system identity* (which system made the change, when), never by the
argument position ("local"/"remote"), so the same two changes give the same decision in any
order of arrival. `source_wins` / `remote_wins` therefore need exactly one side to be the
source database (`"source"`).

Rules (the same table is in docs/conflicts.md), "field" = both sides changed it differently:

* `source_wins`: field → source's value. Delete vs update → source's version: a source update
  resurrects the record on the remote, a source delete deletes it there.
* `remote_wins`: the mirror image of `source_wins`.
* `last_writer_wins`: field → the later UTC change; tie → the system earlier in `priority`;
  tie → the greater value by `stable_key`. Delete vs update → the later of the two changes;
  tie → `priority`; tie → the delete.
* `field_ownership`: field → the owning system's value; a field whose owner is not one of the
  two systems → `fallback`. Delete vs update → the delete wins only if the deleting system owns
  `status` (it owns the lifecycle); otherwise the update wins and the record survives.
* `manual`: any conflict queues the whole record; nothing is applied.

Delete vs delete is not a conflict: the record stays deleted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import ErrorDetails

from subscription_export.core.errors import ConfigError
from subscription_export.core.validation import problem

SOURCE = "source"
"""The system name of our own database."""

LIFECYCLE_FIELD = "status"
"""Under `field_ownership`, the owner of this field is the only system whose delete can win."""

DEFAULT_PRIORITY = (SOURCE, "erp", "crm", "accounting")
DEFAULT_IGNORED = frozenset({"updated_at", "version"})
"""Bookkeeping that every system rewrites on every write; comparing it would make every edit a
conflict and every write-back an echo."""

Role = Literal["local", "remote"]
Record = Mapping[str, Any]


class _Missing:
    """A field absent from a record (or the record is deleted): distinct from a null value."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Strategy(StrEnum):
    SOURCE_WINS = "source_wins"
    REMOTE_WINS = "remote_wins"
    LAST_WRITER_WINS = "last_writer_wins"
    FIELD_OWNERSHIP = "field_ownership"
    MANUAL = "manual"


@dataclass(frozen=True)
class SideState:
    """One system's current state of a record: `record=None` means deleted (or never had it).

    `changed_at` is the UTC time of that system's latest change; a naive time is refused rather
    than guessed, because `last_writer_wins` would silently compare wrong instants.
    """

    system: str
    changed_at: dt.datetime
    record: Record | None

    def __post_init__(self) -> None:
        if not isinstance(self.system, str) or not self.system:
            raise ValueError(f"system must be a non-empty string, got {self.system!r}")
        if not isinstance(self.changed_at, dt.datetime) or self.changed_at.tzinfo is None:
            raise ValueError(
                f"changed_at of {self.system} must be a timezone-aware datetime, "
                f"got {self.changed_at!r}"
            )
        object.__setattr__(self, "changed_at", self.changed_at.astimezone(dt.UTC))
        if self.record is not None:
            object.__setattr__(self, "record", dict(self.record))

    @property
    def deleted(self) -> bool:
        return self.record is None


def _in_order(names: Any) -> Any:
    """A set of names becomes a sorted tuple, so the ranking it gives is deterministic."""
    return tuple(sorted(names)) if isinstance(names, set | frozenset) else names


_Name = Annotated[str, StringConstraints(min_length=1)]
_Names = Annotated[tuple[_Name, ...], BeforeValidator(_in_order)]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ConflictPolicy:
    """How both-sided changes are settled for one destination.

    `priority` lists systems, strongest first: it breaks `last_writer_wins` ties and is the set
    of systems `field_owners` may name (a typo in an owner would otherwise silently never win).
    Systems missing from it rank after all listed ones. `fallback` decides fields without an
    owner under `field_ownership`. `ignored` fields are never compared (see DEFAULT_IGNORED).
    Validated by pydantic whether built in code or from configuration (`from_mapping`).
    """

    strategy: Strategy
    priority: _Names = DEFAULT_PRIORITY
    field_owners: Mapping[_Name, str] = field(default_factory=dict, hash=False)
    fallback: Strategy = Strategy.LAST_WRITER_WINS
    ignored: frozenset[_Name] = DEFAULT_IGNORED

    @model_validator(mode="before")
    @classmethod
    def _fallback_only_for_field_ownership(cls, raw: Any) -> Any:
        """A configuration naming a fallback its strategy never uses is a mistake."""
        if isinstance(raw, Mapping) and "fallback" in raw:
            strategy = raw.get("strategy")
            if strategy is not None and strategy != Strategy.FIELD_OWNERSHIP:
                raise ValueError(f"fallback only applies to field_ownership, not {strategy}")
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> ConflictPolicy:
        if self.fallback is Strategy.FIELD_OWNERSHIP:
            raise ValueError("fallback cannot be field_ownership itself")
        dupes = sorted({p for p in self.priority if self.priority.count(p) > 1})
        if dupes:
            raise ValueError(f"priority lists {', '.join(dupes)} more than once")
        for name, owner in self.field_owners.items():
            if owner not in self.priority:
                raise ValueError(
                    f"field {name!r} is owned by {owner!r}, which is not in the priority list"
                    f" ({', '.join(self.priority)})"
                )
        owned = bool(self.field_owners)
        if self.strategy is Strategy.FIELD_OWNERSHIP and not owned:
            raise ValueError("field_ownership needs at least one field owner")
        if self.strategy is not Strategy.FIELD_OWNERSHIP and owned:
            raise ValueError(f"field_owners only apply to field_ownership, not {self.strategy}")
        object.__setattr__(self, "field_owners", MappingProxyType(dict(self.field_owners)))
        return self

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ConflictPolicy:
        """Build from configuration (TOML/JSON); every mistake is a ConfigError naming the key."""
        try:
            return _POLICY.validate_python(raw)
        except ValidationError as exc:
            phrases = [policy_problem(details, details["loc"]) for details in exc.errors()]
            raise ConfigError("conflict policy: " + "; ".join(phrases)) from None

    def rank(self, system: str) -> int:
        """Lower is stronger; unlisted systems share the weakest rank."""
        return self.priority.index(system) if system in self.priority else len(self.priority)

    def check_sides(self, local: SideState, remote: SideState) -> None:
        """`source_wins`/`remote_wins` are only defined between the source and one remote."""
        uses = {self.strategy}
        if self.strategy is Strategy.FIELD_OWNERSHIP:
            uses.add(self.fallback)
        if uses & {Strategy.SOURCE_WINS, Strategy.REMOTE_WINS}:
            sources = [s for s in (local, remote) if s.system == SOURCE]
            if len(sources) != 1:
                raise ValueError(
                    f"source_wins/remote_wins need exactly one side to be {SOURCE!r}, got "
                    f"{local.system!r} and {remote.system!r}"
                )


_POLICY: TypeAdapter[ConflictPolicy] = TypeAdapter(ConflictPolicy)
_ALLOWED = {
    "strategy": ", ".join(Strategy),
    "fallback": ", ".join(Strategy),
    "priority": "a list of names",
    "ignored": "a list of names",
    "field_owners": "a mapping field -> system",
}


def policy_problem(details: ErrorDetails, loc: tuple[int | str, ...]) -> str:
    """One validation error of a policy as a phrase (`unknown strategy 'x'; expected …`);
    `loc` is its location inside the policy."""
    key, kind, got = (str(loc[0]) if loc else ""), details["type"], details["input"]
    if not loc:
        if kind == "dataclass_type":
            return f"must be a mapping, got {type(got).__name__}"
        return problem(details)
    if kind == "enum":
        return f"unknown {key} {got!r}; expected one of {_ALLOWED[key]}"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"unknown key(s) {key}; expected {', '.join(sorted(_ALLOWED))}"
    if kind == "missing":
        return f"{key!r} is required ({_ALLOWED[key]})"
    if len(loc) == 1:
        return f"{key} {problem(details, _ALLOWED.get(key))}"
    if loc[-1] == "[key]":  # a field_owners key
        return f"{key} keys must be non-empty field names, got {got!r}"
    if key == "field_owners":
        return f"{key}.{loc[1]} {problem(details, 'a system name')}"
    return f"{key} entries must be non-empty strings, got {got!r}"


# -- deciding ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    """The role whose version wins, or None when the conflict is queued for a human."""

    winner: Role | None
    reason: str


def stable_key(value: Any) -> tuple[int, str, str]:
    """A total order over record values that does not depend on argument order or process.

    Used only to break exact ties, so it need not be meaningful (amounts compare as text), only
    stable; an absent field sorts below everything.
    """
    if value is MISSING:
        return (0, "", "")
    return (1, type(value).__qualname__, repr(value))


def same(a: Any, b: Any) -> bool:
    """Equal for conflict purposes: same type and `==` (so 1 != True != Decimal(1)), or
    indistinguishable (so a NaN equals itself and is not a change on every comparison)."""
    if a is b:  # MISSING and MISSING; and any value is indistinguishable from itself
        return True
    if a is MISSING or b is MISSING:
        return a is b
    return (type(a) is type(b) and a == b) or stable_key(a) == stable_key(b)


def _role_of(system: str, local: SideState, remote: SideState) -> Role:
    return "local" if local.system == system else "remote"


def _other(role: Role) -> Role:
    return "remote" if role == "local" else "local"


def _newer(policy: ConflictPolicy, local: SideState, remote: SideState) -> Pick | None:
    """Later UTC change wins, then the stronger system; None when both tie."""
    if local.changed_at != remote.changed_at:
        role: Role = "local" if local.changed_at > remote.changed_at else "remote"
        side = local if role == "local" else remote
        return Pick(role, f"last_writer_wins: {side.system} changed later")
    lrank, rrank = policy.rank(local.system), policy.rank(remote.system)
    if lrank != rrank:
        role = "local" if lrank < rrank else "remote"
        system = local.system if role == "local" else remote.system
        return Pick(role, f"last_writer_wins: same time, {system} has priority")
    return None


def last_writer(
    policy: ConflictPolicy, local: SideState, remote: SideState, lval: Any, rval: Any
) -> Pick:
    """Later UTC change wins; then priority; then the greater value by `stable_key`, so even a
    full tie does not depend on which side arrived first."""
    pick = _newer(policy, local, remote)
    if pick is not None:
        return pick
    role: Role = "local" if stable_key(lval) >= stable_key(rval) else "remote"
    return Pick(role, "last_writer_wins: same time and priority, greater value")


def pick_field(
    policy: ConflictPolicy,
    name: str,
    local: SideState,
    remote: SideState,
    lval: Any,
    rval: Any,
    strategy: Strategy | None = None,
) -> Pick:
    """Winner of a field both sides changed to different values."""
    strategy = strategy or policy.strategy
    if strategy is Strategy.SOURCE_WINS:
        return Pick(_role_of(SOURCE, local, remote), "source_wins")
    if strategy is Strategy.REMOTE_WINS:
        return Pick(_other(_role_of(SOURCE, local, remote)), "remote_wins")
    if strategy is Strategy.LAST_WRITER_WINS:
        return last_writer(policy, local, remote, lval, rval)
    if strategy is Strategy.MANUAL:
        return Pick(None, "manual: queued for review")
    owner = policy.field_owners.get(name)
    if owner is not None and (local.system == owner) != (remote.system == owner):
        return Pick(_role_of(owner, local, remote), f"field_ownership: {owner} owns {name}")
    inner = pick_field(policy, name, local, remote, lval, rval, policy.fallback)
    why = "no owner" if owner is None else f"owner {owner} is not one side"
    return Pick(inner.winner, f"field_ownership: {why}, fallback {inner.reason}")


def pick_delete(
    policy: ConflictPolicy, local: SideState, remote: SideState, strategy: Strategy | None = None
) -> Pick:
    """Winner when one side deleted the record and the other changed it."""
    strategy = strategy or policy.strategy
    deleter: Role = "local" if local.deleted else "remote"
    updater = _other(deleter)
    by = (local if deleter == "local" else remote).system
    if strategy is Strategy.SOURCE_WINS:
        return Pick(_role_of(SOURCE, local, remote), "source_wins")
    if strategy is Strategy.REMOTE_WINS:
        return Pick(_other(_role_of(SOURCE, local, remote)), "remote_wins")
    if strategy is Strategy.MANUAL:
        return Pick(None, "manual: queued for review")
    if strategy is Strategy.FIELD_OWNERSHIP:
        owner = policy.field_owners.get(LIFECYCLE_FIELD)
        if owner == by:
            return Pick(deleter, f"field_ownership: delete by {by}, which owns {LIFECYCLE_FIELD}")
        return Pick(
            updater,
            f"field_ownership: delete by {by} ignored, {LIFECYCLE_FIELD} is owned by "
            f"{owner or 'nobody'}",
        )
    pick = _newer(policy, local, remote)
    if pick is not None:
        return pick
    return Pick(deleter, "last_writer_wins: same time and priority, delete wins")
