"""Seeded sandbox data: subscriptions and a realistic stream of creates, updates and deletes."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.columns import BILLING_CYCLES, STATUSES

CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK")
TIMEZONES = (
    "UTC",
    "America/New_York",
    "America/Los_Angeles",
    "Europe/Berlin",
    "Europe/London",
    "Asia/Tokyo",
    "Australia/Sydney",
    "America/Sao_Paulo",
    "Asia/Kolkata",
)
CATEGORIES = ("streaming", "software", "news", "fitness", "cloud", "music", "gaming")
PLANS = ("Basic", "Standard", "Premium", "Team", "Enterprise")
_CHUNK = 2_000


@dataclass
class GenerateResult:
    created: int = 0
    updated: int = 0
    deleted: int = 0

    @property
    def changes(self) -> int:
        return self.created + self.updated + self.deleted


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_subscription(rng: random.Random, number: int, now: dt.datetime) -> dict[str, object]:
    currency = rng.choice(CURRENCIES)
    cents = rng.randrange(199, 49_999)
    amount = Decimal(cents // 100) if currency == "JPY" else Decimal(cents).scaleb(-2)
    return {
        "id": f"sub_{number:07d}",
        "user_id": f"user_{rng.randrange(1, 2_000_000):07d}",
        "name": f"{rng.choice(PLANS)} {rng.choice(CATEGORIES).title()}",
        "category": rng.choice(CATEGORIES),
        "amount": str(amount),
        "currency": currency,
        "billing_cycle": rng.choice(BILLING_CYCLES),
        "status": "active",
        "next_billing_date": (now + dt.timedelta(days=rng.randrange(1, 365))).date().isoformat(),
        "timezone": rng.choice(TIMEZONES),
        "created_at": _iso(now),
        "updated_at": _iso(now),
        "version": 1,
    }


_INSERT = sa.text(
    "INSERT INTO subscriptions (id, user_id, name, category, amount, currency, billing_cycle,"
    " status, next_billing_date, timezone, created_at, updated_at, version) VALUES (:id, :user_id,"
    " :name, :category, :amount, :currency, :billing_cycle, :status, :next_billing_date,"
    " :timezone, :created_at, :updated_at, :version)"
)
_UPDATE = sa.text(
    "UPDATE subscriptions SET status = :status, amount = :amount,"
    " next_billing_date = :next_billing_date, updated_at = :updated_at, version = version + 1"
    " WHERE id = :id"
)
_DELETE = sa.text("DELETE FROM subscriptions WHERE id = :id")


_STATEMENTS = {"c": _INSERT, "u": _UPDATE, "d": _DELETE}


@dataclass
class _Writer:
    """Writes chunks of generated rows and reports progress."""

    engine: Engine
    progress: Callable[[int], None] | None

    def write(self, **rows_by_kind: list[dict[str, object]]) -> None:
        """One transaction for the chunk; kinds are `c`, `u`, `d`, written in that order."""
        with self.engine.begin() as conn:
            for kind, rows in rows_by_kind.items():
                self._flush(conn, kind, rows)

    def _flush(self, conn: Connection, kind: str, rows: list[dict[str, object]]) -> None:
        if rows:
            conn.execute(_STATEMENTS[kind], rows)
            if self.progress:
                self.progress(len(rows))


def generate(
    engine: Engine,
    *,
    subscriptions: int,
    changes: int,
    seed: int = 7,
    delete_share: float = 0.03,
    progress: Callable[[int], None] | None = None,
) -> GenerateResult:
    """Create up to `subscriptions` new subscriptions, then update/delete until `changes` changes.

    Appends to whatever is there (ids continue), so running it again adds new changes.
    """
    rng = random.Random(seed)
    with engine.connect() as conn:
        live = [r[0] for r in conn.execute(sa.text("SELECT id FROM subscriptions ORDER BY id"))]
        top = conn.execute(
            sa.text("SELECT COUNT(*) FROM subscription_change_log WHERE op = 'c'")
        ).scalar_one()
    rng.seed(f"{seed}-{top}-{len(live)}")  # a re-run continues with fresh, still seeded choices
    writer = _Writer(engine, progress)
    now = dt.datetime.now(dt.UTC)
    creates = min(subscriptions, changes)
    result = GenerateResult()
    result.created = _create(writer, rng, live, int(top) + 1, creates, now)
    remaining = changes - creates
    while remaining > 0 and live:
        chunk = min(_CHUNK, remaining)
        updated, deleted = _update_or_delete(writer, rng, live, chunk, delete_share, now)
        result.updated += updated
        result.deleted += deleted
        remaining -= updated + deleted
    return result


def _create(
    writer: _Writer,
    rng: random.Random,
    live: list[str],
    first_number: int,
    count: int,
    now: dt.datetime,
) -> int:
    """Insert `count` new subscriptions numbered from `first_number`; they join `live`."""
    for start in range(0, count, _CHUNK):
        rows = [
            new_subscription(rng, first_number + i, now)
            for i in range(start, min(count, start + _CHUNK))
        ]
        writer.write(c=rows)
        live.extend(str(r["id"]) for r in rows)
    return count


def _update_or_delete(
    writer: _Writer,
    rng: random.Random,
    live: list[str],
    chunk: int,
    delete_share: float,
    now: dt.datetime,
) -> tuple[int, int]:
    """Up to `chunk` changes to random live subscriptions (at most one each, which keeps
    executemany simple); deleted ones leave `live`. Returns (updated, deleted)."""
    updates: list[dict[str, object]] = []
    deletes: list[dict[str, object]] = []
    touched: set[str] = set()
    moment = _iso(dt.datetime.now(dt.UTC))
    for _ in range(chunk):
        victim = rng.choice(live)
        if victim in touched:
            continue
        touched.add(victim)
        if rng.random() < delete_share:
            deletes.append({"id": victim})
        else:
            updates.append(_update(rng, victim, now, moment))
    writer.write(u=updates, d=deletes)
    gone = {str(d["id"]) for d in deletes}
    if gone:
        live[:] = [s for s in live if s not in gone]
    return len(updates), len(deletes)


def _update(rng: random.Random, ident: str, now: dt.datetime, moment: str) -> dict[str, object]:
    cents = rng.randrange(199, 49_999)
    return {
        "id": ident,
        "status": rng.choice(STATUSES),
        "amount": str(Decimal(cents).scaleb(-2)),
        "next_billing_date": (now + dt.timedelta(days=rng.randrange(1, 365))).date().isoformat(),
        "updated_at": moment,
    }
