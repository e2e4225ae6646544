"""What the metrics mean: one value per (consumer, window) export or delivery, per capture-lag
sample and per reconcile, plus what the dashboard shows of them (`store.py` keeps them).

Definitions (each is what the dashboard plots, so they are fixed here, not in the charts):

- records (`records_created/updated/deleted`, plus the snapshot's op 'r' rows): rows the consumer
  received - written to its file or accepted by the destination. Rows that failed are never
  records; they are errors.
- errors: rows of the window that did not reach the consumer = dead letters + quarantined rows.
  Retries are not errors: a row that succeeded on its third attempt is a record.
- error rate: `errors / (records + errors)`, the share of the window's rows that failed
  (0 when nothing happened). Over several windows, sum both counts first (weighted by volume).
- latency: from a change's commit (`_changed_at`, stamped by the source database) to the moment
  its window finished exporting or delivering (`finished_at`, this host's clock). Clock skew
  between the two hosts shows up as-is (it can make a latency slightly negative).
- capture lag: how far the sequenced log (what exporters can see) trails the newest change.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

UTC = dt.UTC


def error_rate(errors: int, records: int) -> float:
    """Share of rows that failed: `errors / (records + errors)`; 0.0 when nothing happened.

    The denominator is every row the consumer settled (received or failed), so the rate is a
    fraction in [0, 1] and a window where everything failed reads 1.0, not infinity.
    """
    if errors < 0 or records < 0:
        raise ValueError(f"counts must not be negative (errors={errors}, records={records})")
    settled = records + errors
    return errors / settled if settled else 0.0


def require_aware(name: str, moment: dt.datetime | None) -> None:
    if moment is not None and moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC inside), got naive {moment}")


def _iso(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ExportMetrics:
    """What one consumer did with one window (see the module docstring for definitions)."""

    consumer: str
    window_key: str
    lsn_from: int
    lsn_to: int
    created: int
    updated: int
    deleted: int
    bytes: int
    duration_s: float
    finished_at: dt.datetime
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    latency_max_s: float | None = None
    retries: int = 0
    dead_letters: int = 0
    quarantined: int = 0
    conflicts: Mapping[str, int] = field(default_factory=dict)
    schema_version: int | None = None
    # Rows of the table's snapshot (op 'r': rows that existed before `init`): records like the
    # others, or a window of them would read as nothing received.
    snapshot: int = 0

    def __post_init__(self) -> None:
        if not self.consumer or len(self.consumer) > 100:
            raise ValueError(f"consumer must be 1-100 characters, got {self.consumer!r}")
        if self.lsn_from > self.lsn_to:
            raise ValueError(f"lsn_from {self.lsn_from} is after lsn_to {self.lsn_to}")
        counts = {
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "snapshot": self.snapshot,
            "bytes": self.bytes,
            "retries": self.retries,
            "dead_letters": self.dead_letters,
            "quarantined": self.quarantined,
            **{f"conflicts[{k}]": v for k, v in self.conflicts.items()},
        }
        negative = {k: v for k, v in counts.items() if v < 0}
        if negative:
            raise ValueError(f"counts must not be negative: {negative}")
        seconds = {
            "duration_s": self.duration_s,
            "latency_p50_s": self.latency_p50_s,
            "latency_p95_s": self.latency_p95_s,
            "latency_max_s": self.latency_max_s,
        }
        bad = {k: v for k, v in seconds.items() if v is not None and not math.isfinite(v)}
        if bad or self.duration_s < 0:
            raise ValueError(f"durations must be finite (and duration_s >= 0): {bad or seconds}")
        require_aware("finished_at", self.finished_at)

    @property
    def records(self) -> int:
        return self.created + self.updated + self.deleted + self.snapshot

    @property
    def errors(self) -> int:
        return self.dead_letters + self.quarantined

    @property
    def rows_per_s(self) -> float | None:
        """Records per second of export/delivery time; None when no time was measured."""
        return self.records / self.duration_s if self.duration_s > 0 else None

    @property
    def error_rate(self) -> float:
        return error_rate(self.errors, self.records)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, derived numbers included (what `/data.json` and the page carry)."""
        return {
            "consumer": self.consumer,
            "window_key": self.window_key,
            "lsn_from": self.lsn_from,
            "lsn_to": self.lsn_to,
            "records": self.records,
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "snapshot": self.snapshot,
            "bytes": self.bytes,
            "duration_s": self.duration_s,
            "rows_per_s": self.rows_per_s,
            "latency_p50_s": self.latency_p50_s,
            "latency_p95_s": self.latency_p95_s,
            "latency_max_s": self.latency_max_s,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "retries": self.retries,
            "dead_letters": self.dead_letters,
            "quarantined": self.quarantined,
            "conflicts": dict(sorted(self.conflicts.items())),
            "schema_version": self.schema_version,
            "finished_at": _iso(self.finished_at),
        }


@dataclass(frozen=True)
class CaptureSample:
    """One look at the source's change log: is capture keeping up?

    `waiting` counts committed changes without an LSN yet (always 0 on SQLite): committed since
    the last sequencing, or held back while the sequencer cannot get its locks.
    `horizon_stall_s` is the age of the oldest of them: how long exporters have not seen it.
    """

    sampled_at: dt.datetime
    last_lsn: int
    last_change_at: dt.datetime | None  # newest change in the log, sequenced or not
    last_sequenced_at: dt.datetime | None  # commit time of the change holding `last_lsn`
    waiting: int = 0
    horizon_stall_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sampled_at", "last_change_at", "last_sequenced_at"):
            require_aware(name, getattr(self, name))
        if self.waiting < 0 or self.last_lsn < 0 or not 0 <= self.horizon_stall_s < math.inf:
            raise ValueError(f"negative capture sample values: {self}")

    @property
    def lag_s(self) -> float:
        """Seconds the sequenced log trails the newest change (0 when caught up or empty)."""
        if self.last_change_at is None or self.last_sequenced_at is None:
            return 0.0
        return max(0.0, (self.last_change_at - self.last_sequenced_at).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        return {
            "sampled_at": _iso(self.sampled_at),
            "last_lsn": self.last_lsn,
            "last_change_at": _iso(self.last_change_at),
            "last_sequenced_at": _iso(self.last_sequenced_at),
            "lag_s": self.lag_s,
            "waiting": self.waiting,
            "horizon_stall_s": self.horizon_stall_s,
        }


@dataclass(frozen=True)
class ReconcileMetrics:
    """What one reconcile of `system` over feed cursors (cursor_from, cursor_to] did."""

    system: str
    cursor_from: int
    cursor_to: int
    outcomes: Mapping[str, int]  # merged, resolved, queued (conflicts for a person), echo, ...
    written_back: int
    pushed: int
    finished_at: dt.datetime


@dataclass(frozen=True)
class ConsumerStatus:
    """One consumer's position and totals over the loaded period."""

    consumer: str
    watermark: int | None  # None: the consumer has metrics but no watermark (yet)
    lag: int | None  # LSNs between the log's end and the watermark (None without a watermark)
    windows: int
    records: int
    errors: int
    retries: int
    dead_letters: int
    quarantined: int
    last_finished_at: dt.datetime | None
    last_latency_p95_s: float | None  # of the newest export that had rows to measure
    bytes: int = 0  # written to files (formats); deliveries over HTTP record none

    @property
    def error_rate(self) -> float:
        """Weighted over the period: summed errors over summed settled rows."""
        return error_rate(self.errors, self.records)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "watermark": self.watermark,
            "lag": self.lag,
            "windows": self.windows,
            "records": self.records,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "retries": self.retries,
            "dead_letters": self.dead_letters,
            "quarantined": self.quarantined,
            "last_finished_at": _iso(self.last_finished_at),
            "last_latency_p95_s": self.last_latency_p95_s,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class DashboardData:
    """Everything the dashboard shows, as one JSON-serialisable value."""

    generated_at: dt.datetime
    last_lsn: int
    open_dead_letters: int
    open_conflicts: int
    consumers: list[ConsumerStatus]
    exports: list[ExportMetrics]  # oldest first
    capture: list[CaptureSample]  # oldest first
    since: dt.datetime | None = None
    reconcile: dict[str, dict[str, int]] = field(default_factory=dict)  # system -> outcome -> n
    pending_pushes: dict[str, int] = field(default_factory=dict)  # system -> pushes to send

    def as_dict(self) -> dict[str, Any]:
        return {
            "generated_at": _iso(self.generated_at),
            "since": _iso(self.since),
            "last_lsn": self.last_lsn,
            "open_dead_letters": self.open_dead_letters,
            "open_conflicts": self.open_conflicts,
            "consumers": [c.as_dict() for c in self.consumers],
            "exports": [e.as_dict() for e in self.exports],
            "capture": [s.as_dict() for s in self.capture],
            "reconcile": self.reconcile,
            "pending_pushes": self.pending_pushes,
        }

    def to_json(self) -> str:
        # allow_nan=False: a NaN would make the JSON unreadable for browsers; fail loudly instead.
        return json.dumps(self.as_dict(), allow_nan=False, separators=(",", ":"))


@dataclass(frozen=True)
class ConsumerTotals:
    """One consumer's sums over every recorded export of a period: the store adds them up in
    SQL, so they cover every window, not only those the page loads (`load_exports` keeps the
    newest per consumer)."""

    windows: int = 0
    records: int = 0
    errors: int = 0
    retries: int = 0
    dead_letters: int = 0
    quarantined: int = 0
    bytes: int = 0
    last_finished_at: dt.datetime | None = None
    last_latency_p95_s: float | None = None  # of the newest export that had rows to measure


def consumer_status(
    totals: Mapping[str, ConsumerTotals], watermarks: Mapping[str, int], last_lsn: int
) -> list[ConsumerStatus]:
    """Per consumer: watermark and lag, plus its totals; watermark consumers first."""
    names = [*watermarks, *sorted(name for name in totals if name not in watermarks)]
    statuses = []
    for name in names:
        sums = totals.get(name, ConsumerTotals())
        mark = watermarks.get(name)
        statuses.append(
            ConsumerStatus(
                consumer=name,
                watermark=mark,
                lag=None if mark is None else last_lsn - mark,
                windows=sums.windows,
                records=sums.records,
                errors=sums.errors,
                retries=sums.retries,
                dead_letters=sums.dead_letters,
                quarantined=sums.quarantined,
                last_finished_at=sums.last_finished_at,
                last_latency_p95_s=sums.last_latency_p95_s,
                bytes=sums.bytes,
            )
        )
    return statuses
