"""Fault plans: validation, reproducibility by seed, rates, JSON round trip."""

from __future__ import annotations

from collections import Counter

import pytest

from subscription_export.sandbox.faults import FaultPlan, FaultSpec


def draws(plan: FaultPlan, endpoint: str, n: int) -> list[tuple[str, int | None]]:
    return [(f.kind, f.status) for f in (plan.decide(endpoint) for _ in range(n))]


def test_same_seed_same_faults_and_endpoints_have_their_own_streams() -> None:
    spec = FaultSpec(error=0.3, rate_limit=0.1, reset=0.1)
    first = FaultPlan(default=spec, seed=5)
    second = FaultPlan(default=spec, seed=5)
    # Interleaving another endpoint's requests does not change this endpoint's sequence.
    second.decide("POST /batch")
    assert draws(first, "PUT /subscriptions", 50) == draws(second, "PUT /subscriptions", 50)
    other_seed = FaultPlan(default=spec, seed=6)
    assert draws(first, "GET /changes", 50) != draws(other_seed, "GET /changes", 50)


def test_rates_are_respected() -> None:
    spec = FaultSpec(error=0.3, error_statuses=(503,), rate_limit=0.1, timeout=0.05)
    plan = FaultPlan(default=spec, seed=1)
    kinds = Counter(kind for kind, _ in draws(plan, "POST /batch", 4000))
    assert 0.27 < kinds["error"] / 4000 < 0.33
    assert 0.08 < kinds["rate_limit"] / 4000 < 0.12
    assert 0.035 < kinds["timeout"] / 4000 < 0.065
    assert {status for kind, status in draws(plan, "POST /batch", 200) if kind == "error"} == {503}


def test_fault_details() -> None:
    spec = FaultSpec(rate_limit=1.0, retry_after_s=2.5, latency_s=0.01)
    fault = FaultPlan(default=spec).decide("PUT /subscriptions")
    assert (fault.kind, fault.status, fault.retry_after_s, fault.latency_s) == (
        "rate_limit",
        429,
        2.5,
        0.01,
    )
    held = FaultPlan(default=FaultSpec(timeout=1.0, timeout_s=0.7)).decide("x")
    assert (held.kind, held.hold_s) == ("timeout", 0.7)


def test_endpoint_specs_override_the_default() -> None:
    plan = FaultPlan(default=FaultSpec(error=1.0), endpoints={"GET /changes": FaultSpec()})
    assert plan.decide("GET /changes").kind == "none"
    assert plan.decide("POST /batch").kind == "error"


def test_item_failure_rate() -> None:
    plan = FaultPlan(default=FaultSpec(item_failure=0.2), seed=3)
    failures = sum(plan.item_fails("POST /batch") for _ in range(2000))
    assert 340 < failures < 460


@pytest.mark.parametrize(
    "settings",
    [
        {"error": 1.5},
        {"error": 0.6, "rate_limit": 0.5},
        {"error_statuses": (404,)},
        {"latency_s": -1},
    ],
)
def test_invalid_specs_are_refused(settings: dict) -> None:
    with pytest.raises(ValueError):
        FaultSpec(**settings)


def test_json_round_trip_and_unknown_keys() -> None:
    plan = FaultPlan(
        default=FaultSpec(error=0.1, error_statuses=(502, 503)),
        endpoints={"POST /batch": FaultSpec(item_failure=0.05)},
        seed=9,
    )
    again = FaultPlan.from_json(plan.to_json())
    assert again == plan
    assert draws(again, "POST /batch", 30) == draws(plan, "POST /batch", 30)
    with pytest.raises(ValueError, match="unknown"):
        FaultPlan.from_json({"default": {"eror": 0.1}})
