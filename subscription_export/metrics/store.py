"""Export metrics in the state database: one row per (consumer, window) export or delivery, per
capture-lag sample and per reconcile; what each number means is in `metrics/records.py`.

Dagster already plots asset metadata, but only per asset and only inside its UI. This store keeps
the same numbers in the state database so the self-contained dashboard (`metrics.dashboard`),
the CLI and any SQL client can compare consumers side by side, and so they outlive the Dagster
instance's run history.

The tables are defined in `state/tables.py` with the rest of the state. Re-recording a
(consumer, window) replaces its row, so re-exports and retried runs are counted once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import upsert
from subscription_export.core.values import to_utc
from subscription_export.metrics.records import (
    CaptureSample,
    ConsumerStatus,
    ConsumerTotals,
    DashboardData,
    ExportMetrics,
    ReconcileMetrics,
    consumer_status,
    error_rate,
    require_aware,
)
from subscription_export.state.migrate import upgrade
from subscription_export.state.tables import capture_lag, export_metrics, reconcile_metrics

# The values are defined in `records.py`; callers import them from here with the functions.
__all__ = [
    "CAPTURE_SAMPLE_RETENTION",
    "CaptureSample",
    "ConsumerStatus",
    "ConsumerTotals",
    "DashboardData",
    "ExportMetrics",
    "ReconcileMetrics",
    "capture_lag",
    "consumer_status",
    "consumer_totals",
    "error_rate",
    "export_metrics",
    "latency_percentiles",
    "load_capture_samples",
    "load_dashboard_data",
    "load_exports",
    "reconcile_metrics",
    "reconcile_outcomes",
    "record_capture_sample",
    "record_export_metrics",
    "record_reconcile_metrics",
    "sample_capture",
]

UTC = dt.UTC


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    """Aware UTC out of a database value (SQLite hands back naive datetimes, stored as UTC)."""
    return None if moment is None else to_utc(moment)


def record_export_metrics(engine: Engine, metrics: ExportMetrics) -> None:
    """Store one (consumer, window) result; recording the same pair again replaces it."""
    upgrade(engine)  # the tables exist (one query the first time per engine)
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


def record_reconcile_metrics(engine: Engine, metrics: ReconcileMetrics) -> None:
    """Store one reconcile's counts; a re-run of the same range replaces them."""
    upgrade(engine)  # the tables exist (one query the first time per engine)
    require_aware("finished_at", metrics.finished_at)
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
        upsert(conn, reconcile_metrics, values)


def reconcile_outcomes(
    engine: Engine, since: dt.datetime | None = None
) -> dict[str, dict[str, int]]:
    """Per system, remote edits by outcome, summed over reconciles finished at or after `since`."""
    upgrade(engine)  # the tables exist (one query the first time per engine)
    query = sa.select(reconcile_metrics.c.system, reconcile_metrics.c.outcomes)
    if since is not None:
        require_aware("since", since)
        query = query.where(reconcile_metrics.c.finished_at >= since.astimezone(UTC))
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
    upgrade(engine)  # the tables exist (one query the first time per engine)
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
    require_aware("now", moment)
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
    require_aware("finished_at", finished_at)
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


def _export_from_row(row: sa.Row[Any]) -> ExportMetrics:
    return ExportMetrics(
        consumer=row.consumer,
        window_key=row.window_key,
        lsn_from=int(row.lsn_from),
        lsn_to=int(row.lsn_to),
        created=int(row.records_created),
        updated=int(row.records_updated),
        deleted=int(row.records_deleted),
        # No column of its own: `records` holds every op, so the snapshot's rows are the rest.
        snapshot=int(row.records)
        - int(row.records_created)
        - int(row.records_updated)
        - int(row.records_deleted),
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
    upgrade(engine)  # the tables exist (one query the first time per engine)
    t = export_metrics
    rank = sa.func.row_number().over(partition_by=t.c.consumer, order_by=t.c.finished_at.desc())
    inner = sa.select(t, rank.label("rank"))
    if since is not None:
        require_aware("since", since)
        inner = inner.where(t.c.finished_at >= since.astimezone(UTC))
    ranked = inner.subquery()
    query = sa.select(ranked).order_by(ranked.c.finished_at, ranked.c.consumer, ranked.c.window_key)
    if per_consumer is not None:
        query = query.where(ranked.c.rank <= per_consumer)
    with engine.connect() as conn:
        return [_export_from_row(row) for row in conn.execute(query)]


def consumer_totals(engine: Engine, since: dt.datetime | None = None) -> dict[str, ConsumerTotals]:
    """Per consumer, the sums of every export finished at or after `since`, added up by the
    database: the page loads only the newest exports of each consumer, and totals taken from
    those would stop growing (windows) or shrink (records, bytes) on a long-running system,
    which Prometheus reads as a counter reset."""
    upgrade(engine)  # the tables exist (one query the first time per engine)
    t = export_metrics
    period = sa.true()
    if since is not None:
        require_aware("since", since)
        period = t.c.finished_at >= since.astimezone(UTC)
    sums = (
        sa.select(
            t.c.consumer,
            sa.func.count().label("windows"),
            *(
                sa.func.coalesce(sa.func.sum(column), 0).label(column.name)
                for column in (t.c.records, t.c.errors, t.c.retries, t.c.dead_letters)
            ),
            sa.func.coalesce(sa.func.sum(t.c.quarantined), 0).label("quarantined"),
            sa.func.coalesce(sa.func.sum(t.c.bytes), 0).label("bytes"),
            sa.func.max(t.c.finished_at).label("last_finished_at"),
        )
        .where(period)
        .group_by(t.c.consumer)
    )
    newest = sa.func.row_number().over(partition_by=t.c.consumer, order_by=t.c.finished_at.desc())
    measured = (
        sa.select(t.c.consumer, t.c.latency_p95_s, newest.label("rank"))
        .where(period, t.c.latency_p95_s.is_not(None))
        .subquery()
    )
    with engine.connect() as conn:
        p95 = dict(
            conn.execute(
                sa.select(measured.c.consumer, measured.c.latency_p95_s).where(measured.c.rank == 1)
            ).all()
        )
        return {
            row.consumer: ConsumerTotals(
                windows=int(row.windows),
                records=int(row.records),
                errors=int(row.errors),
                retries=int(row.retries),
                dead_letters=int(row.dead_letters),
                quarantined=int(row.quarantined),
                bytes=int(row.bytes),
                last_finished_at=_utc(row.last_finished_at),
                last_latency_p95_s=p95.get(row.consumer),
            )
            for row in conn.execute(sums)
        }


def load_capture_samples(
    engine: Engine, since: dt.datetime | None = None, limit: int = 1_000
) -> list[CaptureSample]:
    """The latest `limit` capture samples taken at or after `since`, oldest first."""
    upgrade(engine)  # the tables exist (one query the first time per engine)
    t = capture_lag
    query = sa.select(t).order_by(t.c.sampled_at.desc(), t.c.id.desc()).limit(limit)
    if since is not None:
        require_aware("since", since)
        query = query.where(t.c.sampled_at >= since.astimezone(UTC))
    with engine.connect() as conn:
        return [_sample_from_row(row) for row in reversed(conn.execute(query).all())]


def load_dashboard_data(
    engine: Engine,
    watermarks: dict[str, int],
    last_lsn: int,
    open_dead_letters: int,
    open_conflicts: int,
    since: dt.datetime | None = None,
    pending_pushes: Mapping[str, int] | None = None,
    capture_now: CaptureSample | None = None,
) -> DashboardData:
    """The dashboard's numbers: metrics from the store, positions and open items from the caller.

    Watermarks, the log's last LSN, open dead letters/conflicts and pending pushes per system live
    elsewhere (watermark store, source, sync tables); taking them as arguments keeps this module
    independent of them. `capture_now`: a sample taken for this page or scrape, shown as the
    newest (not stored): the stored ones are taken by sensor ticks and cycles, so with those
    stopped the last one would show a stale "0 waiting" as the current state.
    """
    exports = load_exports(engine, since)
    return DashboardData(
        generated_at=dt.datetime.now(UTC),
        last_lsn=last_lsn,
        open_dead_letters=open_dead_letters,
        open_conflicts=open_conflicts,
        consumers=consumer_status(consumer_totals(engine, since), watermarks, last_lsn),
        exports=exports,
        capture=[*load_capture_samples(engine, since), *([capture_now] if capture_now else [])],
        since=since,
        reconcile=reconcile_outcomes(engine, since),
        pending_pushes=dict(sorted((pending_pushes or {}).items())),
    )
