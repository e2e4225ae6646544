"""A seeded metrics set whose totals and rates are known exactly (used by store and UI tests)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.engine import Engine

from subscription_export.metrics.store import (
    CaptureSample,
    ExportMetrics,
    record_capture_sample,
    record_export_metrics,
)

T0 = dt.datetime(2025, 3, 30, 0, 0, tzinfo=dt.UTC)
WINDOWS = [(1, 1000), (1001, 2000), (2001, 3000), (3001, 4000)]
LAST_LSN = 4500
WATERMARKS = {"parquet": 4000, "csv": 3000, "jsonl": 0, "erp": 2000}

# erp per window: (records, retries, dead letters); error rates 0.01, 0, 0.005, 0.
ERP = [(990, 25, 10), (1000, 3, 0), (995, 0, 5), (0, 0, 0)]
ERP_ERROR_RATES = [0.01, 0.0, 0.005, 0.0]
ERP_TOTAL_ERROR_RATE = 0.005  # 15 errors / (2985 records + 15 errors)
PARQUET_QUARANTINED = [0, 0, 4, 0]


def key(lo: int, hi: int) -> str:
    return f"{lo:020d}-{hi:020d}"


def seeded_exports() -> list[ExportMetrics]:
    """parquet and csv export every window, erp delivers with retries and dead letters."""
    rows: list[ExportMetrics] = []
    for i, (lo, hi) in enumerate(WINDOWS):
        finished = T0 + dt.timedelta(minutes=10 * i)
        quarantined = PARQUET_QUARANTINED[i]
        exported = hi - lo + 1 - quarantined
        for offset, consumer in enumerate(("parquet", "csv")):
            rows.append(
                ExportMetrics(
                    consumer=consumer,
                    window_key=key(lo, hi),
                    lsn_from=lo,
                    lsn_to=hi,
                    created=100 * (i + 1),
                    updated=exported - 100 * (i + 1) - 10,
                    deleted=10,
                    bytes=50_000 + 1_000 * i,
                    duration_s=0.5 + 0.25 * i + 0.5 * offset,
                    finished_at=finished + dt.timedelta(seconds=5 * offset),
                    latency_p50_s=2.0 + i + 3 * offset,
                    latency_p95_s=4.5 + i + 3 * offset,
                    latency_max_s=6.0 + i + 3 * offset,
                    quarantined=quarantined if consumer == "parquet" else 0,
                    schema_version=1 if i < 2 else 2,
                )
            )
        records, retries, dead = ERP[i]
        rows.append(
            ExportMetrics(
                consumer="erp",
                window_key=key(lo, hi),
                lsn_from=lo,
                lsn_to=hi,
                created=records // 2,
                updated=records - records // 2,
                deleted=0,
                bytes=0,
                duration_s=4.0 if records else 0.0,
                finished_at=finished + dt.timedelta(seconds=30),
                latency_p50_s=10.0 + i if records else None,
                latency_p95_s=20.0 + i if records else None,
                latency_max_s=30.0 + i if records else None,
                retries=retries,
                dead_letters=dead,
                conflicts={"merged": 3, "resolved": 1, "queued": i} if i else {},
                schema_version=1,
            )
        )
    return sorted(rows, key=lambda e: (e.finished_at, e.consumer, e.window_key))


def seeded_samples() -> list[CaptureSample]:
    return [
        CaptureSample(
            sampled_at=T0 + dt.timedelta(minutes=10 * i),
            last_lsn=1000 * (i + 1),
            last_change_at=T0 + dt.timedelta(minutes=10 * i, seconds=2),
            last_sequenced_at=T0 + dt.timedelta(minutes=10 * i),
            waiting=3 * i,
            horizon_stall_s=1.5 * i,
        )
        for i in range(4)
    ]


def seed(engine: Engine) -> tuple[list[ExportMetrics], list[CaptureSample]]:
    exports, samples = seeded_exports(), seeded_samples()
    for export in exports:
        record_export_metrics(engine, export)
    for sample in samples:
        record_capture_sample(engine, sample)
    return exports, samples
