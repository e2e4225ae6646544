"""A snapshot carries its three-way diff; deciding reuses it only when it was computed under the
policy's ignored fields (issue 15: the diff was computed three times per edit)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from subscription_export.reconcile import three_way
from subscription_export.reconcile.conflicts import detect
from subscription_export.reconcile.strategies import SOURCE, ConflictPolicy, SideState
from subscription_export.reconcile.three_way import LocalState, Origin, Snapshot, decide

T0 = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def _snapshot() -> Snapshot:
    base = {"id": "s1", "name": "a", "status": "active", "version": 1, "updated_at": T0}
    local = {**base, "status": "paused", "version": 2, "updated_at": T0 + dt.timedelta(1)}
    remote = {**base, "name": "b", "status": "cancelled", "updated_at": T0 + dt.timedelta(2)}
    return Snapshot(
        destination="erp",
        subscription_id="s1",
        cursor=7,
        base=base,
        base_log_id=1,
        local=LocalState(local, local["updated_at"], 2, 2, "app"),
        remote=SideState("erp", remote["updated_at"], remote),
        remote_version=1,
        remote_now=remote,
        remote_now_version=1,
        remote_now_log_id=1,
        field_origins={"status": Origin(SOURCE, local["updated_at"])},
        record_origin=Origin(SOURCE, local["updated_at"]),
    )


def _counting_detect(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return detect(*args, **kwargs)

    monkeypatch.setattr(three_way, "detect", counting)
    return calls


def test_decide_reuses_the_snapshot_diff_of_the_same_ignored_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = ConflictPolicy.from_mapping({"strategy": "last_writer_wins"})
    bare = _snapshot()
    diff = detect(bare.base, bare.local.record, bare.remote.record, policy.ignored)
    carried = replace(bare, diff=diff)
    calls = _counting_detect(monkeypatch)

    verdict = decide(carried, policy)
    three_way.reasserted_fields(carried, verdict, policy)

    assert calls == []  # neither computed it again
    assert verdict == decide(bare, policy)  # and it is the verdict computed from scratch
    assert verdict.conflicts == ("status",) and verdict.target["name"] == "b"


def test_a_diff_of_other_ignored_fields_is_computed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A diff that compared `name` is not the one a policy ignoring `name` decides on."""
    policy = ConflictPolicy.from_mapping(
        {"strategy": "last_writer_wins", "ignored": ["updated_at", "version", "name"]}
    )
    bare = _snapshot()
    stale = replace(bare, diff=detect(bare.base, bare.local.record, bare.remote.record))
    calls = _counting_detect(monkeypatch)

    verdict = decide(stale, policy)

    assert len(calls) == 1
    assert verdict == decide(bare, policy)
    assert "name" not in [d.field for d in verdict.decisions]
