"""MRR deltas: exact decimals across cycles and currencies, independent of batching."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subscription_export.reports.daily_activity import (
    MRR_STATUSES,
    ZERO,
    monthly_amount,
    scan,
    summarize_day,
)
from subscription_export_tests.reports.factories import row, table, utc

DAY1, DAY2 = dt.date(2026, 6, 1), dt.date(2026, 6, 2)
AT1, AT2 = utc("2026-06-01T10:00:00"), utc("2026-06-02T10:00:00")


@pytest.mark.parametrize(
    ("amount", "cycle", "monthly"),
    [
        ("10", "monthly", "10.0000"),
        ("3", "weekly", "13.0000"),  # 3 * 52 / 12
        ("1", "weekly", "4.3333"),
        ("1", "daily", "30.4167"),  # 365 / 12 = 30.41666...
        ("10", "quarterly", "3.3333"),
        ("100", "yearly", "8.3333"),
        ("0.0006", "yearly", "0.0000"),  # 0.00005: half-even keeps the even 0
        ("0.0018", "yearly", "0.0002"),  # 0.00015: half-even goes up to the even 2
        ("-0.0018", "yearly", "-0.0002"),  # credits round symmetrically
        ("0.0006", "daily", "0.0182"),  # 0.01825 -> 0.0182
        ("0.0018", "daily", "0.0548"),  # 0.05475 -> 0.0548
        ("99999999999999.9999", "daily", "3041666666666666.6636"),  # 18 digits stay exact
    ],
)
def test_monthly_amount(amount: str, cycle: str, monthly: str) -> None:
    result = monthly_amount(Decimal(amount), cycle)
    assert str(result) == monthly


def _book() -> list[dict[str, Any]]:
    """Day 1 builds a book in three currencies; day 2 changes it."""
    return [
        row(1, "c", AT1, "m", "10", "EUR", "monthly"),
        row(2, "c", AT1, "y", "100", "USD", "yearly"),
        row(3, "c", AT1, "d", "1", "USD", "daily"),
        row(4, "c", AT1, "w", "3", "EUR", "weekly"),
        row(5, "c", AT1, "q", "10", "GBP", "quarterly"),
        row(6, "c", AT1, "p", "50", "EUR", "monthly", "paused"),
        row(7, "u", AT2, "m", "10", "EUR", "monthly", "paused"),  # -10 EUR
        row(8, "u", AT2, "m", "10", "EUR", "monthly", "active"),  # +10 EUR (reactivation)
        row(9, "u", AT2, "y", "120", "USD", "yearly"),  # 10.0000 - 8.3333 = +1.6667 USD
        row(10, "u", AT2, "w", "3", "USD", "weekly"),  # -13 EUR, +13 USD
        row(11, "d", AT2, "d", "1", "USD", "daily"),  # -30.4167 USD, churn
        row(12, "u", AT2, "q", "10", "GBP", "quarterly", "cancelled"),  # -3.3333 GBP, churn
        row(13, "d", AT2, "q", "10", "GBP", "quarterly", "cancelled"),  # nothing left
        row(14, "u", AT2, "p", "50", "EUR", "monthly", "past_due"),  # +50 EUR: billed again
        row(15, "c", AT2, "pd", "20", "EUR", "monthly"),  # +20 EUR
        row(16, "u", AT2, "pd", "20", "EUR", "monthly", "past_due"),  # active -> past_due: 0
    ]


def test_known_book_gives_exact_deltas_per_day_and_currency() -> None:
    days = scan([table(_book())], [DAY1, DAY2], "UTC")

    assert days[DAY1].mrr_delta == {
        "EUR": Decimal("23.0000"),
        "USD": Decimal("38.7500"),  # 8.3333 + 30.4167
        "GBP": Decimal("3.3333"),
    }
    assert days[DAY2].mrr_delta == {
        "EUR": Decimal("57.0000"),  # -10 + 10 - 13 + 50 + 20
        "USD": Decimal("-15.7500"),  # 1.6667 + 13 - 30.4167
        "GBP": Decimal("-3.3333"),
    }
    assert days[DAY2].to_json()["mrr_delta"] == {
        "EUR": "57.0000",
        "GBP": "-3.3333",
        "USD": "-15.7500",
    }
    assert (days[DAY1].churned, days[DAY2].churned) == (0, 2)
    assert days[DAY2].mrr_skipped == {}


def test_day_two_alone_uses_state_built_before_it() -> None:
    day = summarize_day(table(_book()), DAY2, "UTC")
    assert day.mrr_delta["USD"] == Decimal("-15.7500")


def test_unchanged_mrr_on_a_touched_currency_reads_zero_not_minus_zero() -> None:
    rows = [
        row(1, "c", AT1, "a", "0", "EUR"),
        row(2, "d", AT2, "a", "0", "EUR"),
        row(3, "c", AT2, "b", "5", "CHF"),
        row(4, "d", AT2, "b", "5", "CHF"),
    ]
    day = summarize_day(table(rows), DAY2, "UTC")
    assert day.to_json()["mrr_delta"] == {"CHF": "0.0000"}


def test_unknown_effects_are_counted_not_guessed() -> None:
    rows = [
        row(1, "u", AT1, "never-created", "10", "EUR"),  # history incomplete
        row(2, "c", AT1, "no-amount", None, "EUR"),  # active without a price
        row(3, "c", AT1, "odd-cycle", "10", "EUR", "fortnightly"),
        row(4, "c", AT1, "paused-no-amount", None, None, None, "paused"),  # bears no MRR: fine
        row(5, "c", AT1, "ok", "7", "EUR"),
    ]
    day = summarize_day(table(rows), DAY1, "UTC")
    assert day.mrr_skipped == {"unknown_prior": 1, "unpriced": 2}
    assert day.mrr_delta == {"EUR": Decimal("7.0000")}


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Valid change sequences: create when absent; update or delete (before-image) when live."""
    live: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for lsn in range(1, draw(st.integers(1, 60)) + 1):
        sid = draw(st.sampled_from(["a", "b", "c", "d"]))
        at = AT1 + dt.timedelta(minutes=draw(st.integers(0, 3 * 24 * 60)))
        if sid in live and draw(st.booleans()) and draw(st.booleans()):
            old = live.pop(sid)
            rows.append(
                row(lsn, "d", at, sid, old["amount"], old["currency"], old["cycle"], old["status"])
            )
            continue
        image = {
            "amount": str(draw(st.decimals(0, 10_000, places=4))),
            "currency": draw(st.sampled_from(["EUR", "USD", "JPY"])),
            "cycle": draw(st.sampled_from(["daily", "weekly", "monthly", "quarterly", "yearly"])),
            "status": draw(st.sampled_from(["active", "paused", "cancelled", "past_due"])),
        }
        rows.append(row(lsn, "u" if sid in live else "c", at, sid, **image))
        live[sid] = image
    return rows


def _final_mrr(rows: list[dict[str, Any]]) -> dict[str, Decimal]:
    """Total MRR of the book at the end, straight from the last image of each live row."""
    last: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["_op"] == "d":
            last.pop(r["id"], None)
        else:
            last[r["id"]] = r
    total: dict[str, Decimal] = {}
    for r in last.values():
        if r["status"] in MRR_STATUSES:
            value = monthly_amount(r["amount"], r["billing_cycle"])
            total[r["currency"]] = total.get(r["currency"], ZERO) + value
    return {cur: v for cur, v in total.items() if v}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=histories(), batch_size=st.integers(1, 17))
def test_deltas_are_independent_of_batching_and_sum_to_the_final_book(
    rows: list[dict[str, Any]], batch_size: int
) -> None:
    days = [DAY1 + dt.timedelta(days=k) for k in range(4)]
    whole = scan([table(rows)], days, "Europe/Berlin")
    batched = scan(table(rows).to_batches(max_chunksize=batch_size), days, "Europe/Berlin")

    assert batched == whole
    assert [a.to_json() for a in batched.values()] == [a.to_json() for a in whole.values()]
    summed: dict[str, Decimal] = {}
    for activity in whole.values():
        for cur, value in activity.mrr_delta.items():
            summed[cur] = summed.get(cur, ZERO) + value
    assert {cur: v for cur, v in summed.items() if v} == _final_mrr(rows)
    assert sum(a.changes for a in whole.values()) == len(rows)
