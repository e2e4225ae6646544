"""Business-day activity of the change log in an IANA timezone: counts, churn and MRR delta.

A business day is `[local midnight, next local midnight)` turned into UTC instants with
zoneinfo, so it lasts 23 or 25 hours across DST (or 0 hours for a day a zone skipped). A change
belongs to the day its `_changed_at` instant falls in; an ambiguous wall time such as 01:30 on a
fall-back day is two different instants, each counted once.

Update rows carry only the after-image, so the MRR a change adds or removes needs the
subscription's previous state. `MrrTracker` keeps the last-known state of every subscription
while the windows stream past in LSN order; memory grows with the number of subscriptions,
never with the number of changes. Day selection and the counts are vectorized with
pyarrow.compute; only the per-row state machine runs in Python.

Rules (each is tested):

- MRR-bearing statuses are `active` and `past_due` (a past-due subscription is still billed,
  in dunning, so it keeps its MRR until it is paused or cancelled). `paused` and `cancelled`
  bear none.
- A subscription's MRR is its amount normalized to a month (daily x365/12, weekly x52/12,
  monthly x1, quarterly /3, yearly /12), computed exactly and quantized to 4 places with
  ROUND_HALF_EVEN. Quantizing each subscription's MRR (not the day's sum) makes every delta an
  exact sum, independent of batching and order, and daily deltas add up exactly to the change
  in total MRR.
- The MRR delta of a change is `mrr(after) - mrr(before)` per currency: a create has no before,
  a delete has no after (its row is the before-image), an update's before is the tracker's
  last-known state. A currency switch removes MRR from the old currency and adds it to the new.
- A change whose MRR effect cannot be known is not guessed: it is counted in `mrr_skipped` by
  reason, `unknown_prior` (an update of a subscription the scan has not seen created, i.e. the
  scanned history is incomplete) or `unpriced` (an MRR-bearing image lacking amount, currency
  or a known billing cycle).
- Churn counts events, not distinct subscriptions: an update whose after-image status is
  `cancelled` while the previous known status is not `cancelled` (an unknown previous state
  counts as not cancelled), or a delete whose before-image status is not `cancelled`. Deleting
  an already-cancelled subscription is housekeeping (its churn was counted when it was
  cancelled); a create is never churn, even when created cancelled.
- `new_subscriptions` counts creates (`_op = 'c'`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from subscription_export.core.locations import is_local

MONTHLY_FACTOR: dict[str, Fraction] = {
    "daily": Fraction(365, 12),
    "weekly": Fraction(52, 12),
    "monthly": Fraction(1),
    "quarterly": Fraction(1, 3),
    "yearly": Fraction(1, 12),
}
MRR_STATUSES = frozenset({"active", "past_due"})
CANCELLED = "cancelled"
MONEY_PLACES = 4
ZERO = Decimal(0).scaleb(-MONEY_PLACES)  # 0.0000: sums keep four places
MISSING_STATUS = "(missing)"
IMAGE_COLUMNS = ("id", "amount", "currency", "billing_cycle", "status")
REQUIRED_COLUMNS = ("_lsn", "_op", "_changed_at", *IMAGE_COLUMNS)
SkipReason = Literal["unknown_prior", "unpriced"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_TS_US = pa.timestamp("us", tz="UTC")


# --- days -----------------------------------------------------------------------------------


def zone(tz: str) -> ZoneInfo:
    """The IANA zone, or a ValueError naming it (ZoneInfo's own error is a bare KeyError)."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA timezone {tz!r}") from None


def local_day_bounds(day: dt.date, tz: str) -> tuple[dt.datetime, dt.datetime]:
    """`[start, end)` in UTC of the local calendar day `day` in `tz`.

    Local midnight is resolved with fold=0: when midnight falls in a DST gap (e.g. Chile springs
    forward at 00:00) that yields the transition instant, which is the first instant of the day.
    """
    where = zone(tz)
    start = dt.datetime.combine(day, dt.time(), tzinfo=where).astimezone(dt.UTC)
    nxt = day + dt.timedelta(days=1)
    end = dt.datetime.combine(nxt, dt.time(), tzinfo=where).astimezone(dt.UTC)
    return start, end


def _micros(instant: dt.datetime) -> int:
    return (instant - _EPOCH) // _MICROSECOND


# --- MRR state machine ----------------------------------------------------------------------


def monthly_amount(amount: Decimal, cycle: str) -> Decimal:
    """`amount` per `cycle` as a monthly amount, exact, then quantized (4 places, HALF_EVEN).

    Integer numerator/denominator keep x365/12 exact before the one rounding (Decimal division
    would round first at 28 digits; Fraction objects are several times slower per row).
    """
    factor = MONTHLY_FACTOR[cycle]
    num, den = amount.as_integer_ratio()
    units = _div_half_even(num * factor.numerator * 10**MONEY_PLACES, den * factor.denominator)
    return Decimal(units).scaleb(-MONEY_PLACES)


def _div_half_even(num: int, den: int) -> int:
    """num / den (den > 0) rounded to the nearest integer, ties to even."""
    quotient, rest = divmod(num, den)  # floor division: 0 <= rest < den, also for num < 0
    if 2 * rest > den or (2 * rest == den and quotient % 2):
        quotient += 1
    return quotient


class SubscriptionState(NamedTuple):
    """The fields of a row image that decide MRR and churn."""

    amount: Decimal | None
    currency: str | None
    billing_cycle: str | None
    status: str | None

    def mrr(self) -> dict[str, Decimal] | None:
        """MRR this state bears per currency; None when it bears some but cannot be priced."""
        if self.status not in MRR_STATUSES:
            return {}
        if self.amount is None or self.currency is None:
            return None
        if self.billing_cycle not in MONTHLY_FACTOR:
            return None
        return {self.currency: monthly_amount(self.amount, self.billing_cycle)}


@dataclass(frozen=True)
class ChangeEffect:
    """What one change did to the book: churn, MRR delta per currency, or why MRR is unknown."""

    churned: bool
    mrr_delta: dict[str, Decimal]
    skipped: SkipReason | None = None


def _delta(after: dict[str, Decimal], before: dict[str, Decimal]) -> dict[str, Decimal]:
    """after - before per currency, zero entries dropped (ZERO - x avoids a "-0.0000")."""
    out = {cur: after.get(cur, ZERO) - before.get(cur, ZERO) for cur in after.keys() | before}
    return {cur: value for cur, value in out.items() if value}


class MrrTracker:
    """Last-known state per subscription, fed every change in LSN order.

    Every change must pass through `apply`, including those outside the days being reported,
    because a later update's MRR delta depends on the state the earlier changes left.
    """

    def __init__(self) -> None:
        self._states: dict[str, SubscriptionState] = {}

    def __len__(self) -> int:
        return len(self._states)

    def state(self, subscription_id: str) -> SubscriptionState | None:
        return self._states.get(subscription_id)

    def remember(self, subscription_id: str, op: str, image: SubscriptionState) -> None:
        """Only move the state (changes outside the reported days need no effect computed)."""
        if op in ("c", "u", "r"):  # r: a snapshot row, the state of a pre-existing subscription
            self._states[subscription_id] = image
        elif op == "d":
            self._states.pop(subscription_id, None)
        else:
            raise ValueError(f"unknown change op {op!r} for subscription {subscription_id!r}")

    def apply(self, subscription_id: str, op: str, image: SubscriptionState) -> ChangeEffect:
        """Record the change and return its effect. `image` is the after-image for c/u and the
        before-image for d, exactly as in the export row."""
        previous = image if op == "d" else None  # a delete row is the before-image
        if op in ("u", "r"):  # an unknown snapshot row opens with its whole MRR
            previous = self._states.get(subscription_id)
        self.remember(subscription_id, op, image)
        churned = _is_churn(op, previous, image)
        if op == "u" and previous is None:
            return ChangeEffect(churned, {}, "unknown_prior")
        before = previous.mrr() if op != "c" and previous is not None else {}
        after = image.mrr() if op != "d" else {}
        if before is None or after is None:
            return ChangeEffect(churned, {}, "unpriced")
        return ChangeEffect(churned, _delta(after, before))

    def total_mrr(self) -> dict[str, Decimal]:
        """Current MRR per currency of the known, priceable subscriptions."""
        total: dict[str, Decimal] = {}
        for state in self._states.values():
            for cur, value in (state.mrr() or {}).items():
                total[cur] = total.get(cur, ZERO) + value
        return total


def _is_churn(op: str, previous: SubscriptionState | None, image: SubscriptionState) -> bool:
    if op == "d":
        return image.status != CANCELLED
    if op == "u":
        return image.status == CANCELLED and (previous is None or previous.status != CANCELLED)
    return False


# --- per-day tallies ------------------------------------------------------------------------


@dataclass(frozen=True)
class DailyActivity:
    """The changes of one local business day; `scanned_to_lsn` says how far the log was read
    (a change committed later can still belong to this day, so re-run after late windows)."""

    day: dt.date
    timezone: str
    start_utc: dt.datetime
    end_utc: dt.datetime
    changes: int
    by_op: dict[str, int]
    by_status: dict[str, int]
    new_subscriptions: int
    churned: int
    mrr_delta: dict[str, Decimal]
    mrr_skipped: dict[str, int]
    windows: tuple[str, ...]
    scanned_to_lsn: int | None

    @property
    def hours(self) -> float:
        return (self.end_utc - self.start_utc).total_seconds() / 3600

    def to_json(self) -> dict[str, object]:
        """Plain JSON (money as exact decimal strings), stable key order for diffable files."""
        iso = "%Y-%m-%dT%H:%M:%SZ"
        return {
            "day": self.day.isoformat(),
            "timezone": self.timezone,
            "start_utc": self.start_utc.strftime(iso),
            "end_utc": self.end_utc.strftime(iso),
            "hours": self.hours,
            "changes": self.changes,
            "by_op": dict(sorted(self.by_op.items())),
            "by_status": dict(sorted(self.by_status.items())),
            "new_subscriptions": self.new_subscriptions,
            "churned": self.churned,
            "mrr_delta": {cur: str(v) for cur, v in sorted(self.mrr_delta.items())},
            "mrr_skipped": dict(sorted(self.mrr_skipped.items())),
            "windows": list(self.windows),
            "scanned_to_lsn": self.scanned_to_lsn,
        }


@dataclass
class _Tally:
    by_op: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    churned: int = 0
    mrr: dict[str, Decimal] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    windows: set[str] = field(default_factory=set)

    def add(self, effect: ChangeEffect) -> None:
        self.churned += effect.churned
        if effect.skipped is not None:
            self.skipped[effect.skipped] += 1
        for cur, value in effect.mrr_delta.items():
            self.mrr[cur] = self.mrr.get(cur, ZERO) + value


class DayScanner:
    """Streams record batches (in LSN order) through one MrrTracker, tallying requested days.

    Holds one batch at a time plus the tracker's per-subscription state.
    """

    def __init__(self, days: Iterable[dt.date], tz: str, tracker: MrrTracker | None = None):
        self.tz = tz
        self.tracker = tracker or MrrTracker()
        self.days = sorted(set(days))
        self.bounds = [local_day_bounds(d, tz) for d in self.days]
        # Days are disjoint, so sorting by date sorts their UTC starts too.
        self._starts = np.array([_micros(s) for s, _ in self.bounds], dtype=np.int64)
        self._ends = np.array([_micros(e) for _, e in self.bounds], dtype=np.int64)
        self._tallies = [_Tally() for _ in self.days]
        self.last_lsn: int | None = None

    def feed(self, data: pa.RecordBatch | pa.Table, source: str | None = None) -> None:
        """Add changes; `source` (a window key) is recorded for the days it contributes to."""
        if isinstance(data, pa.Table):
            for batch in data.to_batches():
                self.feed(batch, source)
            return
        missing = [c for c in REQUIRED_COLUMNS if c not in data.schema.names]
        if missing:
            where = f" in {source}" if source else ""
            raise ValueError(f"export rows{where} lack columns {missing}")
        batch = data.select(list(REQUIRED_COLUMNS))
        if batch.num_rows == 0:
            return
        self._check_order(batch.column("_lsn"))
        buckets = self._buckets(batch.column("_changed_at"))
        self._count(batch, buckets, source)
        self._track(batch, buckets)
        self.last_lsn = batch.column("_lsn")[-1].as_py()

    def _check_order(self, lsn: pa.Array) -> None:
        """The state machine is only right in LSN order; a misordered file must fail loudly."""
        values = lsn.to_numpy(zero_copy_only=False)
        after_last = self.last_lsn is None or values[0] > self.last_lsn
        if not after_last or (np.diff(values) <= 0).any():
            raise ValueError(
                f"changes must arrive in strictly increasing LSN order; got LSNs"
                f" {values[0]}..{values[-1]} after {self.last_lsn}"
            )

    def _buckets(self, changed_at: pa.Array) -> np.ndarray:
        """Index of the requested day each row falls in, -1 for none (vectorized)."""
        buckets = np.full(len(changed_at), -1, dtype=np.int64)
        if not self.days:
            return buckets
        micros = pc.cast(pc.cast(changed_at, _TS_US), pa.int64())
        span = pc.and_(
            pc.greater_equal(micros, int(self._starts[0])),
            pc.less(micros, int(self._ends[-1])),
        )
        rows = np.flatnonzero(span.to_numpy(zero_copy_only=False))
        at = pc.take(micros, pa.array(rows)).to_numpy(zero_copy_only=False)
        day = np.searchsorted(self._starts, at, side="right") - 1
        inside = at < self._ends[day]  # between two requested but non-adjacent days: none
        buckets[rows[inside]] = day[inside]
        return buckets

    def _count(self, batch: pa.RecordBatch, buckets: np.ndarray, source: str | None) -> None:
        rows = np.flatnonzero(buckets >= 0)
        if not len(rows):
            return
        picked = pa.table(
            {
                "day": buckets[rows],
                "op": pc.take(batch.column("_op"), pa.array(rows)),
                "status": pc.fill_null(
                    pc.take(batch.column("status"), pa.array(rows)), MISSING_STATUS
                ),
            }
        )
        for key, counter in (("op", "by_op"), ("status", "by_status")):
            grouped = picked.group_by(["day", key]).aggregate([([], "count_all")]).to_pylist()
            for g in grouped:
                getattr(self._tallies[g["day"]], counter)[g[key]] += g["count_all"]
        if source is not None:
            for day in np.unique(buckets[rows]).tolist():
                self._tallies[day].windows.add(source)

    def _track(self, batch: pa.RecordBatch, buckets: np.ndarray) -> None:
        """Per-row state machine: every row updates the tracker; in-day rows are tallied."""
        columns = [batch.column(c).to_pylist() for c in IMAGE_COLUMNS]
        ops = batch.column("_op").to_pylist()
        for day, op, sid, amount, currency, cycle, status in zip(
            buckets.tolist(), ops, *columns, strict=True
        ):
            image = SubscriptionState(amount, currency, cycle, status)
            if day >= 0:
                self._tallies[day].add(self.tracker.apply(sid, op, image))
            else:
                self.tracker.remember(sid, op, image)

    def results(self) -> dict[dt.date, DailyActivity]:
        return {day: self._activity(i) for i, day in enumerate(self.days)}

    def _activity(self, i: int) -> DailyActivity:
        tally, (start, end) = self._tallies[i], self.bounds[i]
        by_op = {op: tally.by_op.get(op, 0) for op in ("c", "u", "d")} | dict(tally.by_op)
        return DailyActivity(
            day=self.days[i],
            timezone=self.tz,
            start_utc=start,
            end_utc=end,
            changes=sum(by_op.values()),
            by_op=by_op,
            by_status=dict(tally.by_status),
            new_subscriptions=by_op["c"],
            churned=tally.churned,
            mrr_delta=dict(tally.mrr),
            mrr_skipped=dict(tally.skipped),
            windows=tuple(sorted(tally.windows)),
            scanned_to_lsn=self.last_lsn,
        )


# --- entry points ---------------------------------------------------------------------------

Rows = pa.RecordBatch | pa.Table


def scan(
    batches: Iterable[Rows | tuple[str, Rows]], days: Iterable[dt.date], tz: str
) -> dict[dt.date, DailyActivity]:
    """One pass over batches in LSN order (optionally `(window_key, batch)` pairs) for many days."""
    scanner = DayScanner(days, tz)
    for item in batches:
        if isinstance(item, tuple):
            scanner.feed(item[1], item[0])
        else:
            scanner.feed(item)
    return scanner.results()


def summarize_day(data: Rows | Iterable[Rows], day: dt.date, tz: str) -> DailyActivity:
    """Activity of one local day. `data` is every change from the start of history (the MRR
    state needs it), as tables or record batches in LSN order."""
    items = [data] if isinstance(data, pa.RecordBatch | pa.Table) else data
    return scan(items, [day], tz)[day]


def window_files(folder: Path) -> list[Path]:
    """The window Parquet files in LSN order (zero-padded keys sort as numbers); temp files of
    writes in progress are dot-prefixed and skipped."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))


def iter_window_batches(
    paths: Sequence[Path], batch_size: int = 65_536
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """`(window_key, batch)` from each file, reading only the columns the report needs."""
    for path in paths:
        # Opened through the path itself: a local file or an object behind fsspec (s3://…).
        with path.open("rb") as handle:
            source = pq.ParquetFile(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in source.schema_arrow.names]
            if missing:
                raise ValueError(f"{path} lacks columns {missing} needed for the daily report")
            columns = list(REQUIRED_COLUMNS)
            for batch in source.iter_batches(batch_size=batch_size, columns=columns):
                yield path.stem, batch


def summarize_days(
    paths: Sequence[Path], days: Iterable[dt.date], tz: str, batch_size: int = 65_536
) -> dict[dt.date, DailyActivity]:
    """Activity of many local days from window files in LSN order, reading them once."""
    return scan(iter_window_batches(paths, batch_size), days, tz)


def write_report(path: Path, activity: DailyActivity) -> Path:
    """Write the day's JSON atomically (temp beside it, then rename): readers never see half.
    An object store has no rename, and needs none: one PUT is all or nothing."""
    text = json.dumps(activity.to_json(), indent=2) + "\n"
    if not is_local(path):
        path.write_text(text)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
