"""Three-way conflict detection and the resolution strategies (pure; no I/O)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subscription_export.core.errors import ConfigError
from subscription_export.reconcile.conflicts import (
    MISSING,
    RECORD,
    Apply,
    Change,
    ConflictPolicy,
    Outcome,
    Resolution,
    SideState,
    Strategy,
    detect,
    resolve,
)
from subscription_export.reconcile.strategies import same

T0 = dt.datetime(2024, 3, 10, 12, 0, tzinfo=dt.UTC)
BASE: dict[str, Any] = {
    "id": "sub-1",
    "user_id": "user-7",
    "name": "Basic",
    "category": "video",
    "amount": Decimal("9.99"),
    "currency": "EUR",
    "billing_cycle": "monthly",
    "status": "active",
    "next_billing_date": dt.date(2024, 4, 1),
    "timezone": "Europe/Berlin",
    "created_at": T0,
    "updated_at": T0,
    "version": 1,
}
OWNERS = {
    "amount": "erp",
    "currency": "erp",
    "billing_cycle": "erp",
    "name": "crm",
    "category": "crm",
}
POLICIES = {
    "source_wins": ConflictPolicy(Strategy.SOURCE_WINS),
    "remote_wins": ConflictPolicy(Strategy.REMOTE_WINS),
    "last_writer_wins": ConflictPolicy(Strategy.LAST_WRITER_WINS),
    "field_ownership": ConflictPolicy(Strategy.FIELD_OWNERSHIP, field_owners=OWNERS),
    "manual": ConflictPolicy(Strategy.MANUAL),
}
DETERMINISTIC = [p for name, p in POLICIES.items() if name != "manual"]


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def edit(record: dict[str, Any], seconds: int, **changes: Any) -> dict[str, Any]:
    """What a system stores after a user edit: the change plus its own bookkeeping."""
    return {**record, **changes, "updated_at": at(seconds), "version": record["version"] + 1}


def side(system: str, seconds: int, record: dict[str, Any] | None) -> SideState:
    return SideState(system, at(seconds), record)


def decision(res: Resolution, field: str):
    (found,) = [d for d in res.decisions if d.field == field]
    return found


# -- detect ------------------------------------------------------------------------------------


def test_detect_classifies_each_field_three_ways() -> None:
    base = {**BASE, "discount": "5%"}
    local = edit(base, 5, name="Pro", category="music", currency="USD", status="paused")
    remote = edit(base, 7, amount=Decimal("12.50"), category="music", currency="GBP")
    del remote["discount"]

    diff = detect(base, local, remote)

    kinds = {f.field: f.change for f in diff.fields}
    assert kinds["name"] is Change.LOCAL_ONLY
    assert kinds["status"] is Change.LOCAL_ONLY
    assert kinds["amount"] is Change.REMOTE_ONLY
    assert kinds["discount"] is Change.REMOTE_ONLY  # removed field: changed to MISSING
    assert kinds["category"] is Change.BOTH_SAME
    assert kinds["currency"] is Change.BOTH_DIFFERENT
    assert kinds["user_id"] is Change.UNCHANGED
    assert "updated_at" not in kinds and "version" not in kinds
    assert diff.conflicts == ("currency",)
    assert diff.of(Change.REMOTE_ONLY)[1].remote is MISSING


def test_detect_ignored_set_is_a_parameter() -> None:
    local, remote = edit(BASE, 5), edit(BASE, 6)
    remote["version"] = 3

    assert detect(BASE, local, remote).fields == detect(BASE, BASE, BASE).fields
    diff = detect(BASE, local, remote, ignore=frozenset())
    assert diff.conflicts == ("updated_at", "version")


def test_detect_is_strict_about_types_but_not_decimal_exponents() -> None:
    base = {"amount": Decimal("9.9"), "flag": 1}
    diff = detect(base, {"amount": Decimal("9.90"), "flag": True}, base)
    assert {f.field: f.change for f in diff.fields} == {
        "amount": Change.UNCHANGED,  # same number, only the exponent differs
        "flag": Change.LOCAL_ONLY,  # True is not the integer 1
    }


def test_detect_deleted_record_has_every_field_missing() -> None:
    diff = detect(BASE, None, BASE)
    assert not diff.local_exists and diff.remote_exists
    assert all(f.local is MISSING and f.change is Change.LOCAL_ONLY for f in diff.fields)


# -- scenarios: both sides edit the same field -------------------------------------------------


def concurrent_name_edit(local_t: int = 10, remote_t: int = 20) -> tuple[SideState, SideState]:
    return (
        side("source", local_t, edit(BASE, local_t, name="Pro")),
        side("erp", remote_t, edit(BASE, remote_t, name="Plus")),
    )


def test_source_wins_keeps_source_value_and_pushes_it() -> None:
    local, remote = concurrent_name_edit()
    res = resolve(BASE, local, remote, POLICIES["source_wins"])

    assert res.outcome is Outcome.RESOLVED and res.conflicts == ("name",)
    assert res.merged is not None and res.merged["name"] == "Pro"
    assert res.apply_local is None
    assert res.apply_remote == Apply("upsert", res.merged)
    assert (decision(res, "name").winner, decision(res, "name").reason) == ("local", "source_wins")


def test_source_wins_is_about_the_source_system_not_the_argument_position() -> None:
    local, remote = concurrent_name_edit()
    res = resolve(BASE, remote, local, POLICIES["source_wins"])
    assert res.merged is not None and res.merged["name"] == "Pro"
    assert res.apply_local is not None and res.apply_remote is None


def test_remote_wins_takes_remote_value_and_writes_it_back() -> None:
    local, remote = concurrent_name_edit()
    res = resolve(BASE, local, remote, POLICIES["remote_wins"])

    assert res.outcome is Outcome.RESOLVED
    assert res.merged is not None and res.merged["name"] == "Plus"
    assert res.apply_local == Apply("upsert", res.merged) and res.apply_remote is None


@pytest.mark.parametrize(
    ("local_t", "remote_t", "priority", "winner"),
    [
        (10, 20, ("source", "erp"), "Plus"),  # remote later
        (30, 20, ("source", "erp"), "Pro"),  # local later
        (20, 20, ("source", "erp"), "Pro"),  # tie: source has priority
        (20, 20, ("erp", "source"), "Plus"),  # tie: erp has priority
    ],
)
def test_last_writer_wins_by_time_then_priority(local_t, remote_t, priority, winner) -> None:
    local, remote = concurrent_name_edit(local_t, remote_t)
    policy = ConflictPolicy(Strategy.LAST_WRITER_WINS, priority=priority)
    res = resolve(BASE, local, remote, policy)

    assert res.outcome is Outcome.RESOLVED
    assert res.merged is not None and res.merged["name"] == winner
    assert decision(res, "name").reason.startswith("last_writer_wins")


def test_last_writer_wins_full_tie_is_decided_by_value_not_arrival_order() -> None:
    policy = POLICIES["last_writer_wins"]
    a = side("erp", 5, edit(BASE, 5, name="Alpha"))
    b = side("erp", 5, edit(BASE, 5, name="Zulu"))  # same system, same instant

    first, second = resolve(BASE, a, b, policy), resolve(BASE, b, a, policy)

    assert first.merged == second.merged
    assert first.merged is not None and first.merged["name"] == "Zulu"
    assert "greater value" in decision(first, "name").reason


def test_field_ownership_owner_wins_even_when_older() -> None:
    local = side("source", 30, edit(BASE, 30, amount=Decimal("1.00"), name="Pro"))
    remote = side("erp", 20, edit(BASE, 20, amount=Decimal("12.50"), name="Plus"))
    res = resolve(BASE, local, remote, POLICIES["field_ownership"])

    assert res.outcome is Outcome.RESOLVED and res.conflicts == ("amount", "name")
    assert res.merged is not None
    assert res.merged["amount"] == Decimal("12.50")  # erp owns amount
    assert decision(res, "amount").reason == "field_ownership: erp owns amount"
    # crm owns name but is not part of this pair: the fallback (last writer) decides
    assert res.merged["name"] == "Pro"
    assert decision(res, "name").reason.startswith("field_ownership: owner crm is not one side")
    assert res.apply_local is not None and res.apply_remote is not None


def test_manual_queues_and_applies_nothing() -> None:
    local = side("source", 10, edit(BASE, 10, name="Pro", status="paused"))
    remote = side("erp", 20, edit(BASE, 20, name="Plus"))
    res = resolve(BASE, local, remote, POLICIES["manual"])

    assert res.outcome is Outcome.QUEUED and res.conflicts == ("name",)
    assert res.merged is None and not res.deleted
    assert res.apply_local is None and res.apply_remote is None
    assert decision(res, "name").winner is None
    assert decision(res, "status").winner == "local"  # still logged for the reviewer


# -- scenarios: one-sided changes, creates, deletes --------------------------------------------


@pytest.mark.parametrize("name", POLICIES)
def test_one_sided_changes_on_different_fields_merge_for_every_strategy(name: str) -> None:
    local = side("source", 30, edit(BASE, 30, name="Pro", status="paused"))
    remote = side("erp", 20, edit(BASE, 20, amount=Decimal("12.50")))
    res = resolve(BASE, local, remote, POLICIES[name])

    assert res.outcome is Outcome.MERGED and res.conflicts == ()
    expected = {**BASE, "name": "Pro", "status": "paused", "amount": Decimal("12.50")}
    assert res.merged == {**expected, "updated_at": at(30), "version": 2}  # later writer's
    assert res.apply_local == Apply("upsert", res.merged)
    assert res.apply_remote == Apply("upsert", res.merged)
    assert [(d.field, d.winner) for d in res.decisions] == [
        ("amount", "remote"),
        ("name", "local"),
        ("status", "local"),
    ]


@pytest.mark.parametrize("name", POLICIES)
def test_same_change_on_both_sides_is_no_conflict(name: str) -> None:
    local = side("source", 10, edit(BASE, 10, name="Pro"))
    remote = side("erp", 20, edit(BASE, 20, name="Pro"))
    res = resolve(BASE, local, remote, POLICIES[name])

    assert res.outcome is Outcome.NO_CHANGE
    assert res.apply_local is None and res.apply_remote is None
    assert res.merged is not None and res.merged["name"] == "Pro"
    assert decision(res, "name").winner == "both"


@pytest.mark.parametrize("name", POLICIES)
def test_one_sided_delete_and_create_merge_for_every_strategy(name: str) -> None:
    policy = POLICIES[name]
    deleted = resolve(BASE, side("source", 5, BASE), side("erp", 9, None), policy)
    assert deleted.outcome is Outcome.MERGED and deleted.deleted
    assert deleted.apply_local == Apply("delete") and deleted.apply_remote is None

    created = resolve(None, side("source", 5, None), side("erp", 9, BASE), policy)
    assert created.outcome is Outcome.MERGED and created.merged == BASE
    assert created.apply_local == Apply("upsert", BASE) and created.apply_remote is None
    assert decision(created, RECORD).reason == "created on erp"


@pytest.mark.parametrize("name", POLICIES)
def test_delete_vs_delete_is_no_conflict(name: str) -> None:
    res = resolve(BASE, side("source", 5, None), side("erp", 6, None), POLICIES[name])
    assert res.outcome is Outcome.NO_CHANGE and res.deleted
    assert res.apply_local is None and res.apply_remote is None


@pytest.mark.parametrize(
    ("policy", "delete_t", "update_t", "delete_wins"),
    [
        (POLICIES["source_wins"], 10, 20, True),  # source deleted
        (POLICIES["remote_wins"], 10, 20, False),  # erp updated: record resurrected in source
        (POLICIES["last_writer_wins"], 20, 10, True),
        (POLICIES["last_writer_wins"], 10, 20, False),
        (POLICIES["last_writer_wins"], 10, 10, True),  # tie: source (the deleter) has priority
        (ConflictPolicy(Strategy.LAST_WRITER_WINS, priority=("erp", "source")), 10, 10, False),
        (POLICIES["field_ownership"], 20, 10, False),  # nobody owns status: data survives
        (
            ConflictPolicy(Strategy.FIELD_OWNERSHIP, field_owners={"status": "source"}),
            10,
            20,
            True,
        ),
        (ConflictPolicy(Strategy.FIELD_OWNERSHIP, field_owners={"status": "erp"}), 20, 10, False),
    ],
)
def test_source_delete_vs_remote_update(policy, delete_t, update_t, delete_wins) -> None:
    updated = edit(BASE, update_t, amount=Decimal("12.50"))
    local, remote = side("source", delete_t, None), side("erp", update_t, updated)
    res = resolve(BASE, local, remote, policy)

    assert res.outcome is Outcome.RESOLVED and res.conflicts == (RECORD,)
    if delete_wins:
        assert res.deleted
        assert res.apply_local is None and res.apply_remote == Apply("delete")
    else:
        assert res.merged == updated
        assert res.apply_local == Apply("upsert", updated) and res.apply_remote is None
    assert decision(res, RECORD).winner == ("local" if delete_wins else "remote")


def test_last_writer_wins_full_tie_between_delete_and_update_keeps_the_delete() -> None:
    deleted, updated = side("erp", 5, None), side("erp", 5, edit(BASE, 5, name="X"))
    for a, b in ((deleted, updated), (updated, deleted)):
        res = resolve(BASE, a, b, POLICIES["last_writer_wins"])
        assert res.outcome is Outcome.RESOLVED and res.deleted
        assert decision(res, RECORD).reason.endswith("delete wins")


def test_unlisted_systems_rank_after_listed_ones() -> None:
    policy = ConflictPolicy(Strategy.LAST_WRITER_WINS, priority=("source", "crm"))
    listed = side("crm", 5, edit(BASE, 5, name="A"))
    unlisted = side("billing", 5, edit(BASE, 5, name="Z"))  # "Z" would win a value tie-break
    res = resolve(BASE, unlisted, listed, policy)
    assert res.merged is not None and res.merged["name"] == "A"
    assert decision(res, "name").reason == "last_writer_wins: same time, crm has priority"


def test_source_update_resurrects_record_deleted_on_remote_under_source_wins() -> None:
    updated = edit(BASE, 10, name="Pro")
    res = resolve(BASE, side("source", 10, updated), side("erp", 20, None), POLICIES["source_wins"])

    assert res.outcome is Outcome.RESOLVED and res.merged == updated
    assert res.apply_remote == Apply("upsert", updated) and res.apply_local is None


def test_remote_delete_by_status_owner_wins_under_field_ownership() -> None:
    policy = ConflictPolicy(Strategy.FIELD_OWNERSHIP, field_owners={"status": "crm"})
    updated = edit(BASE, 30, name="Pro")
    res = resolve(BASE, side("source", 30, updated), side("crm", 10, None), policy)

    assert res.deleted and res.apply_local == Apply("delete")
    assert decision(res, RECORD).reason == "field_ownership: delete by crm, which owns status"


def test_manual_queues_delete_vs_update() -> None:
    res = resolve(
        BASE,
        side("source", 10, None),
        side("erp", 20, edit(BASE, 20, name="X")),
        POLICIES["manual"],
    )
    assert res.outcome is Outcome.QUEUED and res.conflicts == (RECORD,)
    assert res.apply_local is None and res.apply_remote is None


# -- audit, inputs, policy validation ----------------------------------------------------------


def test_audit_dict_is_json_with_exact_money_and_iso_times() -> None:
    base = {**BASE, "discount": "5%"}
    local = side("source", 10, edit(base, 10, amount=Decimal("12.50")))
    remote_record = edit(base, 20, amount=Decimal("7.0000"), next_billing_date=dt.date(2024, 5, 1))
    del remote_record["discount"]
    res = resolve(base, local, side("erp", 20, remote_record), POLICIES["last_writer_wins"])

    audit = json.loads(json.dumps(res.to_audit_dict()))

    assert audit["outcome"] == "resolved" and audit["strategy"] == "last_writer_wins"
    assert audit["local_changed_at"] == "2024-03-10T12:00:10.000000Z"
    assert audit["conflicts"] == ["amount"]
    by_field = {d["field"]: d for d in audit["decisions"]}
    assert by_field["amount"] == {
        "field": "amount",
        "base": "9.99",
        "local": "12.50",
        "remote": "7.0000",
        "winner": "remote",
        "reason": "last_writer_wins: erp changed later",
    }
    assert "remote" not in by_field["discount"]  # absent, not null
    assert by_field["next_billing_date"]["remote"] == "2024-05-01"
    assert audit["apply_local"]["op"] == "upsert"
    assert audit["apply_local"]["record"]["amount"] == "7.0000"
    assert audit["merged"]["updated_at"] == "2024-03-10T12:00:20.000000Z"
    assert (
        res.to_audit_dict()
        == resolve(
            base, local, side("erp", 20, remote_record), POLICIES["last_writer_wins"]
        ).to_audit_dict()
    )


def test_side_state_refuses_naive_times_and_normalizes_to_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SideState("erp", dt.datetime(2024, 1, 1), BASE)
    plus_two = dt.timezone(dt.timedelta(hours=2))
    state = SideState("erp", dt.datetime(2024, 1, 1, 14, tzinfo=plus_two), BASE)
    assert state.changed_at == dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)
    assert state.changed_at.tzinfo is dt.UTC


@pytest.mark.parametrize("strategy", [Strategy.SOURCE_WINS, Strategy.REMOTE_WINS])
def test_source_relative_strategies_need_exactly_one_source_side(strategy: Strategy) -> None:
    with pytest.raises(ValueError, match="exactly one side to be 'source'"):
        resolve(BASE, side("erp", 1, BASE), side("crm", 2, BASE), ConflictPolicy(strategy))


def test_policy_from_mapping() -> None:
    policy = ConflictPolicy.from_mapping(
        {
            "strategy": "field_ownership",
            "priority": ["source", "erp", "crm"],
            "field_owners": {"amount": "erp", "name": "crm"},
            "fallback": "source_wins",
            "ignored": ["updated_at", "version", "etag"],
        }
    )
    assert policy.strategy is Strategy.FIELD_OWNERSHIP and policy.fallback is Strategy.SOURCE_WINS
    assert policy.priority == ("source", "erp", "crm")
    assert dict(policy.field_owners) == {"amount": "erp", "name": "crm"}
    assert policy.ignored == {"updated_at", "version", "etag"}
    assert ConflictPolicy.from_mapping({"strategy": "manual"}) == ConflictPolicy(Strategy.MANUAL)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"strategy": "newest_wins"},
            "unknown strategy 'newest_wins'; expected one of source_wins",
        ),
        ({}, "'strategy' is required"),
        ({"strategy": "manual", "owners": {}}, "unknown key"),
        (
            {"strategy": "field_ownership", "field_owners": {"amount": "billing"}},
            "'amount' is owned by 'billing', which is not in the priority list",
        ),
        ({"strategy": "field_ownership"}, "needs at least one field owner"),
        ({"strategy": "source_wins", "field_owners": {"amount": "erp"}}, "only apply to field_"),
        ({"strategy": "last_writer_wins", "fallback": "manual"}, "fallback only applies"),
        (
            {"strategy": "field_ownership", "field_owners": {"a": "erp"}, "fallback": "x"},
            "unknown fallback 'x'",
        ),
        (
            {
                "strategy": "field_ownership",
                "field_owners": {"a": "erp"},
                "fallback": "field_ownership",
            },
            "fallback cannot be field_ownership",
        ),
        ({"strategy": "manual", "priority": "source,erp"}, "priority must be a list"),
        ({"strategy": "manual", "priority": ["erp", "erp"]}, "lists erp more than once"),
        ({"strategy": "manual", "priority": ["erp", ""]}, "non-empty strings"),
        ("manual", "must be a mapping"),
    ],
)
def test_policy_from_mapping_errors(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ConflictPolicy.from_mapping(raw)


# -- properties --------------------------------------------------------------------------------

REMOTES = ("erp", "crm", "accounting")
FIELDS = {
    "name": st.sampled_from(["Basic", "Pro", "Plus"]),
    "category": st.sampled_from(["video", "music", None]),
    "amount": st.sampled_from([Decimal("9.99"), Decimal("12.50"), Decimal("0.00")]),
    "currency": st.sampled_from(["EUR", "USD"]),
    "billing_cycle": st.sampled_from(["monthly", "yearly"]),
    "status": st.sampled_from(["active", "paused", "cancelled"]),
    "next_billing_date": st.sampled_from([dt.date(2024, 4, 1), dt.date(2024, 5, 1)]),
    "discount": st.sampled_from(["5%", "10%", MISSING]),  # an added column; MISSING = absent
}
times = st.integers(0, 3).map(at)  # few distinct instants, so ties are common


def put(record: dict[str, Any], name: str, value: Any) -> None:
    if value is MISSING:
        record.pop(name, None)
    else:
        record[name] = value


@st.composite
def records(draw) -> dict[str, Any]:
    record = dict(BASE)
    for name, values in FIELDS.items():
        put(record, name, draw(values))
    record["version"] = draw(st.integers(1, 4))
    record["updated_at"] = draw(times)
    return record


@st.composite
def variants(draw, base: dict[str, Any] | None) -> dict[str, Any] | None:
    """A side's state: deleted, or the base with some fields (and bookkeeping) changed."""
    if base is None or draw(st.integers(0, 7)) == 0:
        return draw(st.one_of(st.none(), records()))
    record = dict(base)
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4, unique=True)):
        put(record, name, draw(FIELDS[name]))
    record["version"] = draw(st.integers(1, 4))
    record["updated_at"] = draw(times)
    return record


@st.composite
def cases(draw, any_systems: bool) -> tuple[dict[str, Any] | None, SideState, SideState]:
    """(base, local, remote). With any_systems=False one side is the source, in either role."""
    base = draw(st.one_of(records(), records(), st.none()))
    if any_systems:
        systems = iter([draw(st.sampled_from(("source", *REMOTES))) for _ in range(2)])
    else:
        remote = draw(st.sampled_from(REMOTES))
        systems = iter(draw(st.permutations(["source", remote])))
    local = SideState(next(systems), draw(times), draw(variants(base)))
    remote_side = SideState(next(systems), draw(times), draw(variants(base)))
    return base, local, remote_side


def swapped(res: Resolution) -> tuple[Any, ...]:
    return (res.outcome, res.merged, res.conflicts, res.apply_remote, res.apply_local)


def unswapped(res: Resolution) -> tuple[Any, ...]:
    return (res.outcome, res.merged, res.conflicts, res.apply_local, res.apply_remote)


def equivalent(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Equal apart from the bookkeeping every system rewrites."""
    if a is None or b is None:
        return a is b
    return detect(a, a, b).sides_agree


def applied(state: SideState, write: Apply | None, at_: dt.datetime) -> SideState:
    if write is None:
        return state
    return SideState(state.system, at_, None if write.op == "delete" else write.record)


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(case=cases(any_systems=False), policy=st.sampled_from(list(POLICIES.values())))
def test_swapping_roles_gives_the_same_result_between_source_and_remote(case, policy) -> None:
    base, local, remote = case
    assert unswapped(resolve(base, local, remote, policy)) == swapped(
        resolve(base, remote, local, policy)
    )


@FAST
@given(
    case=cases(any_systems=True),
    policy=st.sampled_from([POLICIES["last_writer_wins"], POLICIES["field_ownership"]]),
)
def test_swapping_roles_gives_the_same_result_between_any_systems(case, policy) -> None:
    base, local, remote = case
    assert unswapped(resolve(base, local, remote, policy)) == swapped(
        resolve(base, remote, local, policy)
    )


@FAST
@given(case=cases(any_systems=False), policy=st.sampled_from(list(POLICIES.values())))
def test_no_one_sided_change_is_ever_lost(case, policy) -> None:
    base, local, remote = case
    res = resolve(base, local, remote, policy)
    diff = detect(base, local.record, remote.record)
    if res.outcome is Outcome.QUEUED:
        assert res.conflicts and res.apply_local is None and res.apply_remote is None
        return
    if local.record is not None and remote.record is not None:
        assert res.merged is not None
        for f in diff.of(Change.LOCAL_ONLY, Change.BOTH_SAME):
            assert same(res.merged.get(f.field, MISSING), f.local), f
        for f in diff.of(Change.REMOTE_ONLY):
            assert same(res.merged.get(f.field, MISSING), f.remote), f
        for f in diff.of(Change.UNCHANGED):
            assert same(res.merged.get(f.field, MISSING), f.base), f
    elif (local.record is None) != (remote.record is None):
        present = local if remote.record is None else remote
        if base is None:  # a create on one side only
            assert res.merged == present.record and res.outcome is Outcome.MERGED
        elif not diff.changed("local" if present is local else "remote"):  # a plain delete
            assert res.deleted and res.outcome is Outcome.MERGED
        else:
            assert res.outcome is Outcome.RESOLVED and res.conflicts == (RECORD,)
    # whatever was decided, applying the writes leaves both sides holding the merged state
    assert equivalent(applied(local, res.apply_local, T0).record, res.merged)
    assert equivalent(applied(remote, res.apply_remote, T0).record, res.merged)


@FAST
@given(case=cases(any_systems=False), policy=st.sampled_from(DETERMINISTIC))
def test_resolving_again_after_applying_is_no_change(case, policy) -> None:
    base, local, remote = case
    res = resolve(base, local, remote, policy)
    merged = res.merged
    for new_base in (base, merged):
        again = resolve(
            new_base,
            SideState(local.system, T0, merged),
            SideState(remote.system, T0, merged),
            policy,
        )
        assert again.outcome is Outcome.NO_CHANGE
        assert again.merged == merged and again.apply_local is None and again.apply_remote is None
    after = resolve(
        merged, applied(local, res.apply_local, T0), applied(remote, res.apply_remote, T0), policy
    )
    assert after.outcome is Outcome.NO_CHANGE


MAX_ROUNDS = 3  # 1: every remote meets the source; 2: earlier remotes catch up; 3: all quiet


class Network:
    """The source and some remotes, each holding (record, change time), plus a base per remote.

    A write stamps the writer's own bookkeeping (as a real system would) and carries the latest
    change time it merges, not the time of the write, so a write-back never out-dates an edit
    it has not seen.
    """

    def __init__(self, policy: ConflictPolicy, remotes: list[str], start: dict[str, Any]):
        self.policy = policy
        self.remotes = remotes
        self.state = {s: SideState(s, T0, start) for s in ["source", *remotes]}
        self.bases: dict[str, dict[str, Any] | None] = dict.fromkeys(remotes, start)
        self.clock = T0

    def write(self, system: str, record: dict[str, Any] | None, changed_at: dt.datetime) -> None:
        if record is not None:
            old = self.state[system].record or {"version": 0}
            record = {**record, "version": old.get("version", 0) + 1, "updated_at": self.clock}
        self.state[system] = SideState(system, changed_at, record)

    def reconcile(self, remote: str) -> Outcome:
        local, other = self.state["source"], self.state[remote]
        res = resolve(self.bases[remote], local, other, self.policy)
        assert res.outcome is not Outcome.QUEUED
        changed_at = max(local.changed_at, other.changed_at)
        for system, write in (("source", res.apply_local), (remote, res.apply_remote)):
            if write is not None:
                self.write(system, write.record, changed_at)
        self.bases[remote] = res.merged
        return res.outcome


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(DETERMINISTIC), data=st.data())
def test_repeated_reconciliation_converges(policy: ConflictPolicy, data: st.DataObject) -> None:
    remotes = data.draw(st.lists(st.sampled_from(REMOTES), min_size=1, max_size=2, unique=True))
    net = Network(policy, remotes, data.draw(records()))
    systems = ["source", *remotes]
    for _ in range(data.draw(st.integers(1, 14))):
        net.clock += dt.timedelta(seconds=data.draw(st.integers(0, 2)))
        action = data.draw(st.sampled_from(["edit", "edit", "edit", "delete", "reconcile"]))
        if action == "reconcile":
            net.reconcile(data.draw(st.sampled_from(remotes)))
            continue
        system = data.draw(st.sampled_from(systems))
        if action == "delete":
            net.write(system, None, net.clock)
            continue
        record = dict(net.state[system].record or data.draw(records()))  # edit or re-create
        name = data.draw(st.sampled_from(sorted(FIELDS)))
        put(record, name, data.draw(FIELDS[name]))
        net.write(system, record, net.clock)

    for _ in range(MAX_ROUNDS):
        outcomes = [net.reconcile(r) for r in data.draw(st.permutations(remotes))]
        if all(o is Outcome.NO_CHANGE for o in outcomes):
            break
    else:
        pytest.fail(f"not converged after {MAX_ROUNDS} rounds: {net.state}")
    final = net.state["source"].record
    assert all(equivalent(net.state[s].record, final) for s in systems), net.state
    assert all(equivalent(net.bases[r], final) for r in remotes)
