"""Export metrics: one row per (consumer, window) export or delivery, plus capture-lag samples.

Dagster already plots asset metadata, but only per asset and only inside its UI. This store keeps
the same numbers in the state database so the self-contained dashboard (`metrics.dashboard`),
the CLI and any SQL client can compare consumers side by side, and so they outlive the Dagster
instance's run history.

Definitions (each is what the dashboard plots, so they are fixed here, not in the charts):

- records (`records_created/updated/deleted`): rows the consumer received - written to its file
  or accepted by the destination. Rows that failed are never records; they are errors.
- errors: rows of the window that did not reach the consumer = dead letters + quarantined rows.
  Retries are not errors: a row that succeeded on its third attempt is a record.
- error rate: `errors / (records + errors)`, the share of the window's rows that failed
  (0 when nothing happened). Over several windows, sum both counts first (weighted by volume).
- latency: from a change's commit (`_changed_at`, stamped by the source database) to the moment
  its window finished exporting or delivering (`finished_at`, this host's clock). Clock skew
  between the two hosts shows up as-is (it can make a latency slightly negative).
- capture lag: how far the sequenced log (what exporters can see) trails the newest change.

The tables live in the state database under their own MetaData, created by `init_metrics`.
Re-recording a (consumer, window) replaces its row, so re-exports and retried runs are counted
once.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import upsert
from subscription_export.core.values import to_utc

UTC = dt.UTC

metadata = sa.MetaData()

export_metrics = sa.Table(
    "export_metrics",
    metadata,
    sa.Column("consumer", sa.String(100), primary_key=True),
    sa.Column("window_key", sa.String(41), primary_key=True),
    sa.Column("lsn_from", sa.BigInteger, nullable=False),
    sa.Column("lsn_to", sa.BigInteger, nullable=False),
    sa.Column("records", sa.BigInteger, nullable=False),  # created + updated + deleted, for SQL
    sa.Column("records_created", sa.BigInteger, nullable=False),
    sa.Column("records_updated", sa.BigInteger, nullable=False),
    sa.Column("records_deleted", sa.BigInteger, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("rows_per_s", sa.Float),  # NULL when the duration was too short to measure
    sa.Column("latency_p50_s", sa.Float),  # NULL when the window had no rows
    sa.Column("latency_p95_s", sa.Float),
    sa.Column("latency_max_s", sa.Float),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("retries", sa.BigInteger, nullable=False),
    sa.Column("dead_letters", sa.BigInteger, nullable=False),
    sa.Column("quarantined", sa.BigInteger, nullable=False),
    sa.Column("conflicts", sa.Text, nullable=False),  # JSON {"outcome": count}, keys sorted
    sa.Column("schema_version", sa.Integer),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("export_metrics_by_time", "finished_at"),
)

capture_lag = sa.Table(
    "capture_lag",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_lsn", sa.BigInteger, nullable=False),
    sa.Column("last_change_at", sa.DateTime(timezone=True)),
    sa.Column("last_sequenced_at", sa.DateTime(timezone=True)),
    sa.Column("waiting", sa.BigInteger, nullable=False),
    sa.Column("horizon_stall_s", sa.Float, nullable=False),
    sa.Index("capture_lag_by_time", "sampled_at"),
)

# One row per reconcile of a system's feed range: what happened to the remote edits in it.
reconcile_runs = sa.Table(
    "reconcile_metrics",
    metadata,
    sa.Column("system", sa.String(100), primary_key=True),
    sa.Column("cursor_from", sa.BigInteger, primary_key=True),
    sa.Column("cursor_to", sa.BigInteger, primary_key=True),
    sa.Column("outcomes", sa.Text, nullable=False),  # JSON {"outcome": count}, keys sorted
    sa.Column("written_back", sa.BigInteger, nullable=False),
    sa.Column("pushed", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("reconcile_metrics_by_time", "finished_at"),
)


def error_rate(errors: int, records: int) -> float:
    """Share of rows that failed: `errors / (records + errors)`; 0.0 when nothing happened.

    The denominator is every row the consumer settled (received or failed), so the rate is a
    fraction in [0, 1] and a window where everything failed reads 1.0, not infinity.
    """
    if errors < 0 or records < 0:
        raise ValueError(f"counts must not be negative (errors={errors}, records={records})")
    settled = records + errors
    return errors / settled if settled else 0.0


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    """Aware UTC out of a database value (SQLite hands back naive datetimes, stored as UTC)."""
    return None if moment is None else to_utc(moment)


def _require_aware(name: str, moment: dt.datetime | None) -> None:
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

    def __post_init__(self) -> None:
        if not self.consumer or len(self.consumer) > 100:
            raise ValueError(f"consumer must be 1-100 characters, got {self.consumer!r}")
        if self.lsn_from > self.lsn_to:
            raise ValueError(f"lsn_from {self.lsn_from} is after lsn_to {self.lsn_to}")
        counts = {
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
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
        _require_aware("finished_at", self.finished_at)

    @property
    def records(self) -> int:
        return self.created + self.updated + self.deleted

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
            _require_aware(name, getattr(self, name))
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


_initialized: set[str] = set()
_init_lock = threading.Lock()


def init_metrics(engine: Engine) -> None:
    """Create the metrics tables if missing (idempotent; cheap after the first call per process)."""
    url = engine.url.render_as_string(hide_password=False)
    with _init_lock:
        if url in _initialized:
            return
        metadata.create_all(engine)
        _initialized.add(url)


def record_export_metrics(engine: Engine, metrics: ExportMetrics) -> None:
    """Store one (consumer, window) result; recording the same pair again replaces it."""
    init_metrics(engine)
    values = {
        "consumer": metrics.consumer,
        "window_key": metrics.window_key,
        "lsn_from": metrics.lsn_from,
        "lsn_to": metrics.lsn_to,
        "records": metrics.records,
        "records_created": metrics.created,
        "records_updated": metrics.updated,
        "records_deleted": metrics.deleted,
        "bytes": metrics.bytes,
        "duration_s": metrics.duration_s,
        "rows_per_s": metrics.rows_per_s,
        "latency_p50_s": metrics.latency_p50_s,
        "latency_p95_s": metrics.latency_p95_s,
        "latency_max_s": metrics.latency_max_s,
        "errors": metrics.errors,
        "retries": metrics.retries,
        "dead_letters": metrics.dead_letters,
        "quarantined": metrics.quarantined,
        "conflicts": json.dumps(dict(sorted(metrics.conflicts.items()))),
        "schema_version": metrics.schema_version,
        "finished_at": metrics.finished_at.astimezone(UTC),
    }
    with engine.begin() as conn:
        upsert(conn, export_metrics, values)


# Capture samples are taken every sensor tick or CLI cycle; older ones are pruned so the table
# stays small (export metrics, one row per window and consumer, are kept).
CAPTURE_SAMPLE_RETENTION = dt.timedelta(days=14)


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


def record_reconcile_metrics(engine: Engine, metrics: ReconcileMetrics) -> None:
    """Store one reconcile's counts; a re-run of the same range replaces them."""
    init_metrics(engine)
    _require_aware("finished_at", metrics.finished_at)
    values = {
        "system": metrics.system,
        "cursor_from": metrics.cursor_from,
        "cursor_to": metrics.cursor_to,
        "outcomes": json.dumps({k: v for k, v in sorted(metrics.outcomes.items()) if v}),
        "written_back": metrics.written_back,
        "pushed": metrics.pushed,
        "finished_at": metrics.finished_at.astimezone(UTC),
    }
    with engine.begin() as conn:
        upsert(conn, reconcile_runs, values)


def reconcile_outcomes(
    engine: Engine, since: dt.datetime | None = None
) -> dict[str, dict[str, int]]:
    """Per system, remote edits by outcome, summed over reconciles finished at or after `since`."""
    init_metrics(engine)
    query = sa.select(reconcile_runs.c.system, reconcile_runs.c.outcomes)
    if since is not None:
        _require_aware("since", since)
        query = query.where(reconcile_runs.c.finished_at >= since.astimezone(UTC))
    totals: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for system, outcomes in conn.execute(query):
            per_system = totals.setdefault(system, {})
            for outcome, count in json.loads(outcomes).items():
                per_system[outcome] = per_system.get(outcome, 0) + int(count)
    return {system: dict(sorted(counts.items())) for system, counts in sorted(totals.items())}


def record_capture_sample(engine: Engine, sample: CaptureSample) -> None:
    """Append one sample (a time series: samples are never replaced) and prune samples older
    than `CAPTURE_SAMPLE_RETENTION` before it."""
    init_metrics(engine)
    values = {
        "sampled_at": sample.sampled_at.astimezone(UTC),
        "last_lsn": sample.last_lsn,
        "last_change_at": sample.last_change_at and sample.last_change_at.astimezone(UTC),
        "last_sequenced_at": sample.last_sequenced_at and sample.last_sequenced_at.astimezone(UTC),
        "waiting": sample.waiting,
        "horizon_stall_s": sample.horizon_stall_s,
    }
    cutoff = values["sampled_at"] - CAPTURE_SAMPLE_RETENTION
    with engine.begin() as conn:
        conn.execute(sa.insert(capture_lag).values(**values))
        conn.execute(sa.delete(capture_lag).where(capture_lag.c.sampled_at < cutoff))


def sample_capture(source: Engine, now: dt.datetime | None = None) -> CaptureSample:
    """Measure capture lag on the source's change log, using only indexed lookups."""
    moment = now or dt.datetime.now(UTC)
    _require_aware("now", moment)
    log = "subscription_change_log"
    with source.connect() as conn:
        last_lsn, last_sequenced = conn.execute(
            sa.text(
                f"SELECT lsn, changed_at FROM {log} WHERE lsn IS NOT NULL ORDER BY lsn DESC LIMIT 1"
            )
        ).first() or (0, None)
        newest = conn.execute(
            sa.text(f"SELECT changed_at FROM {log} ORDER BY id DESC LIMIT 1")
        ).scalar()
        waiting = conn.execute(sa.text(f"SELECT COUNT(*) FROM {log} WHERE lsn IS NULL")).scalar()
        oldest_waiting = conn.execute(
            sa.text(f"SELECT changed_at FROM {log} WHERE lsn IS NULL ORDER BY id LIMIT 1")
        ).scalar()
    stall = 0.0
    if oldest_waiting is not None:
        stall = max(0.0, (moment - to_utc(oldest_waiting)).total_seconds())
    return CaptureSample(
        sampled_at=moment,
        last_lsn=int(last_lsn),
        last_change_at=None if newest is None else to_utc(newest),
        last_sequenced_at=None if last_sequenced is None else to_utc(last_sequenced),
        waiting=int(waiting or 0),
        horizon_stall_s=stall,
    )


_UNIT_PER_S = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def _timestamps(changed_at: pa.Array | pa.ChunkedArray | Sequence[dt.datetime]) -> pa.Array:
    if isinstance(changed_at, pa.ChunkedArray):
        return changed_at.combine_chunks()
    if isinstance(changed_at, pa.Array):
        return changed_at
    # Aware datetimes convert to UTC; naive ones are taken as UTC (the project's rule).
    return pa.array(list(changed_at), type=pa.timestamp("us", tz="UTC"))


def latency_percentiles(
    changed_at: pa.Array | pa.ChunkedArray | Sequence[dt.datetime], finished_at: dt.datetime
) -> tuple[float | None, float | None, float | None]:
    """(p50, p95, max) seconds from each change's commit time to `finished_at`.

    Percentiles interpolate linearly between closest ranks (`pyarrow.compute.quantile`,
    interpolation="linear", the same as numpy's default): for latencies 1..100 s, p50 = 50.5 and
    p95 = 95.05. Nulls are ignored; no values gives (None, None, None). Naive timestamps (in an
    array without a zone, or naive datetimes in a list) are taken as UTC.
    """
    _require_aware("finished_at", finished_at)
    stamps = _timestamps(changed_at)
    if not pa.types.is_timestamp(stamps.type):
        raise TypeError(f"changed_at must be timestamps, got {stamps.type}")
    per_s = _UNIT_PER_S[stamps.type.unit]
    # Subtract as integers in the array's own unit, so epoch-sized numbers lose no precision.
    finished_us = (finished_at - _EPOCH) // dt.timedelta(microseconds=1)
    finished = pa.scalar(finished_us * per_s // 1_000_000, pa.int64())
    ticks = pc.subtract(finished, stamps.cast(pa.int64()))
    seconds = pc.divide(ticks.cast(pa.float64()), float(per_s))
    if seconds.null_count == len(seconds):
        return None, None, None
    p50, p95 = pc.quantile(seconds, q=[0.5, 0.95], interpolation="linear").to_pylist()
    return p50, p95, pc.max(seconds).as_py()


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
        }

    def to_json(self) -> str:
        # allow_nan=False: a NaN would make the JSON unreadable for browsers; fail loudly instead.
        return json.dumps(self.as_dict(), allow_nan=False, separators=(",", ":"))


def _export_from_row(row: sa.Row[Any]) -> ExportMetrics:
    return ExportMetrics(
        consumer=row.consumer,
        window_key=row.window_key,
        lsn_from=int(row.lsn_from),
        lsn_to=int(row.lsn_to),
        created=int(row.records_created),
        updated=int(row.records_updated),
        deleted=int(row.records_deleted),
        bytes=int(row.bytes),
        duration_s=float(row.duration_s),
        finished_at=to_utc(row.finished_at),
        latency_p50_s=row.latency_p50_s,
        latency_p95_s=row.latency_p95_s,
        latency_max_s=row.latency_max_s,
        retries=int(row.retries),
        dead_letters=int(row.dead_letters),
        quarantined=int(row.quarantined),
        conflicts=json.loads(row.conflicts),
        schema_version=row.schema_version,
    )


def _sample_from_row(row: sa.Row[Any]) -> CaptureSample:
    return CaptureSample(
        sampled_at=to_utc(row.sampled_at),
        last_lsn=int(row.last_lsn),
        last_change_at=_utc(row.last_change_at),
        last_sequenced_at=_utc(row.last_sequenced_at),
        waiting=int(row.waiting),
        horizon_stall_s=float(row.horizon_stall_s),
    )


def load_exports(
    engine: Engine, since: dt.datetime | None = None, per_consumer: int | None = 2_000
) -> list[ExportMetrics]:
    """Recorded exports finished at or after `since`, at most the latest `per_consumer` of each
    consumer (keeps the page small on a long-running system), oldest first."""
    init_metrics(engine)
    t = export_metrics
    rank = sa.func.row_number().over(partition_by=t.c.consumer, order_by=t.c.finished_at.desc())
    inner = sa.select(t, rank.label("rank"))
    if since is not None:
        _require_aware("since", since)
        inner = inner.where(t.c.finished_at >= since.astimezone(UTC))
    ranked = inner.subquery()
    query = sa.select(ranked).order_by(ranked.c.finished_at, ranked.c.consumer, ranked.c.window_key)
    if per_consumer is not None:
        query = query.where(ranked.c.rank <= per_consumer)
    with engine.connect() as conn:
        return [_export_from_row(row) for row in conn.execute(query)]


def load_capture_samples(
    engine: Engine, since: dt.datetime | None = None, limit: int = 1_000
) -> list[CaptureSample]:
    """The latest `limit` capture samples taken at or after `since`, oldest first."""
    init_metrics(engine)
    t = capture_lag
    query = sa.select(t).order_by(t.c.sampled_at.desc(), t.c.id.desc()).limit(limit)
    if since is not None:
        _require_aware("since", since)
        query = query.where(t.c.sampled_at >= since.astimezone(UTC))
    with engine.connect() as conn:
        return [_sample_from_row(row) for row in reversed(conn.execute(query).all())]


def consumer_status(
    exports: Iterable[ExportMetrics], watermarks: Mapping[str, int], last_lsn: int
) -> list[ConsumerStatus]:
    """Per consumer: watermark and lag, plus totals of its exports; watermark consumers first."""
    by_consumer: dict[str, list[ExportMetrics]] = {name: [] for name in watermarks}
    for export in exports:
        by_consumer.setdefault(export.consumer, []).append(export)
    statuses = []
    for name, rows in by_consumer.items():
        last = max(rows, key=lambda e: e.finished_at, default=None)
        measured = [e for e in rows if e.latency_p95_s is not None]
        last_measured = max(measured, key=lambda e: e.finished_at, default=None)
        mark = watermarks.get(name)
        statuses.append(
            ConsumerStatus(
                consumer=name,
                watermark=mark,
                lag=None if mark is None else last_lsn - mark,
                windows=len(rows),
                records=sum(e.records for e in rows),
                errors=sum(e.errors for e in rows),
                retries=sum(e.retries for e in rows),
                dead_letters=sum(e.dead_letters for e in rows),
                quarantined=sum(e.quarantined for e in rows),
                last_finished_at=None if last is None else last.finished_at,
                last_latency_p95_s=None if last_measured is None else last_measured.latency_p95_s,
            )
        )
    return statuses


def load_dashboard_data(
    engine: Engine,
    watermarks: dict[str, int],
    last_lsn: int,
    open_dead_letters: int,
    open_conflicts: int,
    since: dt.datetime | None = None,
) -> DashboardData:
    """The dashboard's numbers: metrics from the store, positions and open items from the caller.

    Watermarks, the log's last LSN and open dead letters/conflicts live elsewhere (watermark
    store, source, sync tables); taking them as arguments keeps this module independent of them.
    """
    exports = load_exports(engine, since)
    return DashboardData(
        generated_at=dt.datetime.now(UTC),
        last_lsn=last_lsn,
        open_dead_letters=open_dead_letters,
        open_conflicts=open_conflicts,
        consumers=consumer_status(exports, watermarks, last_lsn),
        exports=exports,
        capture=load_capture_samples(engine, since),
        since=since,
        reconcile=reconcile_outcomes(engine, since),
    )
