"""The retry policy: full-jitter backoff, cap, budget, Retry-After, and what is retried."""

from __future__ import annotations

import random

import pytest
import requests
import responses

from subscription_export.delivery.retry import (
    PermanentDeliveryError,
    RetryableDeliveryError,
    RetryPolicy,
    is_retryable,
    parse_retry_after,
    raise_for_delivery,
    send,
)
from subscription_export_tests.delivery.factories import FakeClock, TopOfRange, fake_policy


def always_failing(error: Exception):
    calls = []

    def fn() -> None:
        calls.append(1)
        raise error

    return fn, calls


def test_backoff_ceilings_double_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=3.0, rng=TopOfRange())
    assert [policy.backoff_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_full_jitter_spreads_delays_over_zero_to_ceiling() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=100.0, rng=random.Random(1))
    delays = [policy.backoff_s(4) for _ in range(500)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 1.0 and max(delays) > 7.0  # the whole range is used, not just the top


def test_same_seed_gives_same_delays() -> None:
    first = RetryPolicy(rng=random.Random(3))
    second = RetryPolicy(rng=random.Random(3))
    assert [first.backoff_s(n) for n in range(1, 6)] == [second.backoff_s(n) for n in range(1, 6)]


def test_retryable_error_is_retried_with_backoff_until_max_attempts() -> None:
    clock = FakeClock()
    policy = fake_policy(clock, max_attempts=4, rng=TopOfRange())
    fn, calls = always_failing(RetryableDeliveryError("HTTP 503", 503))
    with pytest.raises(RetryableDeliveryError) as caught:
        policy.call(fn)
    assert len(calls) == 4
    assert caught.value.attempts == 4
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_retry_after_is_honoured_and_capped() -> None:
    clock = FakeClock()
    policy = fake_policy(clock, max_attempts=3, max_delay_s=8.0)
    errors = iter(
        [
            RetryableDeliveryError("429", 429, retry_after_s=3.0),
            RetryableDeliveryError("429", 429, retry_after_s=120.0),
        ]
    )

    def fn() -> str:
        error = next(errors, None)
        if error:
            raise error
        return "done"

    assert policy.call(fn) == ("done", 3)
    assert clock.sleeps == [3.0, 8.0]


def test_budget_stops_before_a_sleep_that_would_overrun_it() -> None:
    clock = FakeClock()
    policy = fake_policy(clock, max_attempts=100, budget_s=10.0, rng=TopOfRange())
    fn, calls = always_failing(RetryableDeliveryError("HTTP 503", 503))
    with pytest.raises(RetryableDeliveryError):
        policy.call(fn)
    # Sleeps 0.5, 1, 2, 4 (7.5 s); the next 8 s sleep would end at 15.5 s > 10 s.
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0]
    assert len(calls) == 5
    assert clock.now <= 10.0


def test_permanent_error_is_not_retried() -> None:
    clock = FakeClock()
    fn, calls = always_failing(PermanentDeliveryError("HTTP 422", 422))
    with pytest.raises(PermanentDeliveryError) as caught:
        fake_policy(clock).call(fn)
    assert len(calls) == 1
    assert caught.value.attempts == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, None, True),
        (500, None, True),
        (502, None, True),
        (503, None, True),
        (504, None, True),
        (409, "request_in_progress", True),
        (409, "stale_version", False),
        (400, None, False),
        (404, None, False),
        (422, None, False),
        (501, None, False),
    ],
)
def test_retryable_statuses(status: int, code: str | None, expected: bool) -> None:
    assert is_retryable(status, code) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("0.25", 0.25),
        ("-4", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("soon", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = 1445412480.0  # 2015-10-21T07:28:00Z
    assert parse_retry_after(header, now=lambda: now) == expected


@responses.activate
def test_http_answers_are_classified() -> None:
    url = "http://erp.test/x"
    responses.add(responses.PUT, url, status=429, headers={"Retry-After": "2"})
    responses.add(responses.PUT, url, status=409, json={"error": "stale_version"})
    responses.add(responses.PUT, url, status=404, json={"error": "not_found"})

    with pytest.raises(RetryableDeliveryError) as limited:
        raise_for_delivery(requests.put(url))
    assert (limited.value.status, limited.value.retry_after_s) == (429, 2.0)
    with pytest.raises(PermanentDeliveryError, match="stale_version"):
        raise_for_delivery(requests.put(url))
    raise_for_delivery(requests.put(url), ok_statuses=frozenset({404}))


def test_transport_failures_become_retryable() -> None:
    for error in (requests.ConnectionError("reset"), requests.ReadTimeout("slow")):

        def call(error: Exception = error) -> requests.Response:
            raise error

        with pytest.raises(RetryableDeliveryError):
            send(call)
