"""Change rows, a fake clock and fast retry policies for the delivery tests."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from subscription_export.delivery.retry import RetryPolicy

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def change_row(
    lsn: int,
    sid: str = "sub_1",
    op: str = "c",
    *,
    amount: str | Decimal = "10.00",
    currency: str = "EUR",
    status: str = "active",
    version: int = 1,
    origin: str = "app",
    **extra: Any,
) -> dict[str, Any]:
    """A change row as the export produces it (after-image; before-image for deletes)."""
    changed_at = T0 + dt.timedelta(seconds=lsn)
    row: dict[str, Any] = {
        "_lsn": lsn,
        "_op": op,
        "_changed_at": changed_at,
        "_origin": origin,
        "_deleted": op == "d",
        "_schema_version": 1,
        "id": sid,
        "user_id": f"user_{sid}",
        "name": "Premium Music",
        "category": "music",
        "amount": Decimal(amount),
        "currency": currency,
        "billing_cycle": "monthly",
        "status": status,
        "next_billing_date": dt.date(2026, 4, 1),
        "timezone": "Europe/Berlin",
        "created_at": T0,
        "updated_at": changed_at,
        "version": version,
    }
    row.update(extra)
    return row


@dataclass
class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class TopOfRange(random.Random):
    """A random source whose `uniform(a, b)` returns `b`: exposes the backoff ceilings."""

    def uniform(self, a: float, b: float) -> float:
        return b


def fake_policy(clock: FakeClock, **overrides: Any) -> RetryPolicy:
    """A policy that sleeps on the fake clock (tests never really wait)."""
    settings: dict[str, Any] = {
        "max_attempts": 5,
        "base_delay_s": 0.5,
        "max_delay_s": 8.0,
        "budget_s": 60.0,
        "sleep": clock.sleep,
        "clock": clock,
        "rng": random.Random(7),
    }
    settings.update(overrides)
    return RetryPolicy(**settings)


def fast_policy(**overrides: Any) -> RetryPolicy:
    """A real-time policy with millisecond delays, for tests against the sandbox servers."""
    settings: dict[str, Any] = {
        "max_attempts": 200,
        "base_delay_s": 0.002,
        "max_delay_s": 0.02,
        "budget_s": 15.0,
        "rng": random.Random(11),
    }
    settings.update(overrides)
    return RetryPolicy(**settings)
