"""The metrics store: SQLite and PostgreSQL round trips, idempotence, what the numbers mean."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math

import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import engine_for
from subscription_export.metrics.store import (
    CAPTURE_SAMPLE_RETENTION,
    CaptureSample,
    ExportMetrics,
    ReconcileMetrics,
    error_rate,
    export_metrics,
    latency_percentiles,
    load_capture_samples,
    load_dashboard_data,
    load_exports,
    reconcile_outcomes,
    record_capture_sample,
    record_export_metrics,
    record_reconcile_metrics,
    sample_capture,
)
from subscription_export.source.demo_table import init_demo_source
from subscription_export.source.sequencer import sequence
from subscription_export_tests.helpers import insert
from subscription_export_tests.metrics.seed import (
    ERP_ERROR_RATES,
    ERP_TOTAL_ERROR_RATE,
    LAST_LSN,
    T0,
    WATERMARKS,
    key,
    seed,
)


def test_round_trip_keeps_every_value(metrics_engine: Engine) -> None:
    exports, samples = seed(metrics_engine)

    loaded = load_exports(metrics_engine)
    assert loaded == exports  # dataclass equality: every field, floats exact, UTC-aware times
    assert all(e.finished_at.tzinfo == dt.UTC for e in loaded)
    assert load_capture_samples(metrics_engine) == samples
    with metrics_engine.connect() as conn:
        stored = conn.execute(
            sa.select(
                export_metrics.c.records, export_metrics.c.errors, export_metrics.c.rows_per_s
            )
            .where(export_metrics.c.consumer == "erp")
            .order_by(export_metrics.c.lsn_from)
        ).all()
    assert [tuple(r) for r in stored] == [
        (990, 10, 990 / 4.0),
        (1000, 0, 250.0),
        (995, 5, 995 / 4.0),
        (0, 0, None),
    ]


def test_recording_a_window_again_replaces_it(metrics_engine: Engine) -> None:
    first = ExportMetrics(
        consumer="crm",
        window_key=key(1, 100),
        lsn_from=1,
        lsn_to=100,
        created=60,
        updated=30,
        deleted=0,
        bytes=0,
        duration_s=2.0,
        finished_at=T0,
        retries=4,
        dead_letters=10,
    )
    record_export_metrics(metrics_engine, first)
    again = dataclasses.replace(
        first,
        updated=40,
        dead_letters=0,
        retries=0,
        finished_at=T0 + dt.timedelta(hours=1),
        conflicts={"resolved": 2},
    )
    record_export_metrics(metrics_engine, again)
    record_export_metrics(metrics_engine, again)

    assert load_exports(metrics_engine) == [again]
    with metrics_engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(export_metrics)).scalar()
    assert count == 1


def test_seeded_error_rates_and_totals(metrics_engine: Engine) -> None:
    seed(metrics_engine)
    data = load_dashboard_data(
        metrics_engine, WATERMARKS, LAST_LSN, open_dead_letters=15, open_conflicts=3
    )

    erp_rates = [e.error_rate for e in data.exports if e.consumer == "erp"]
    assert erp_rates == ERP_ERROR_RATES
    status = {c.consumer: c for c in data.consumers}
    erp = status["erp"]
    assert (erp.records, erp.errors, erp.retries, erp.dead_letters) == (2985, 15, 28, 15)
    assert erp.error_rate == ERP_TOTAL_ERROR_RATE  # retries do not count as errors
    assert status["parquet"].error_rate == 4 / 4000  # the quarantined rows of window 3
    assert (status["parquet"].watermark, status["parquet"].lag) == (4000, 500)
    assert (status["erp"].watermark, status["erp"].lag) == (2000, 2500)
    # A consumer with a watermark but no metrics yet is listed with zeros.
    assert (status["jsonl"].windows, status["jsonl"].lag, status["jsonl"].error_rate) == (
        0,
        4500,
        0,
    )
    assert list(status)[:4] == ["parquet", "csv", "jsonl", "erp"]
    assert erp.last_finished_at == T0 + dt.timedelta(minutes=30, seconds=30)


def test_consumer_without_watermark_and_since_filter(sqlite_metrics: Engine) -> None:
    seed(sqlite_metrics)
    since = T0 + dt.timedelta(minutes=20)
    data = load_dashboard_data(sqlite_metrics, {}, LAST_LSN, 0, 0, since=since)

    assert {e.window_key for e in data.exports} == {key(2001, 3000), key(3001, 4000)}
    assert all(e.finished_at >= since for e in data.exports)
    assert [s.sampled_at for s in data.capture] == [since, since + dt.timedelta(minutes=10)]
    assert {c.consumer: (c.watermark, c.lag, c.windows) for c in data.consumers} == {
        "parquet": (None, None, 2),
        "csv": (None, None, 2),
        "erp": (None, None, 2),
    }
    newest = load_exports(sqlite_metrics, per_consumer=1)
    assert {(e.consumer, e.window_key) for e in newest} == {
        (c, key(3001, 4000)) for c in ("parquet", "csv", "erp")
    }


def test_dashboard_data_is_json(sqlite_metrics: Engine) -> None:
    exports, samples = seed(sqlite_metrics)
    data = load_dashboard_data(sqlite_metrics, WATERMARKS, LAST_LSN, 15, 3)
    doc = json.loads(data.to_json())

    assert doc["last_lsn"] == LAST_LSN
    assert (doc["open_dead_letters"], doc["open_conflicts"]) == (15, 3)
    assert len(doc["exports"]) == len(exports)
    last_erp = [e for e in doc["exports"] if e["consumer"] == "erp"][-1]
    assert last_erp["rows_per_s"] is None and last_erp["latency_p95_s"] is None
    assert doc["exports"][0]["finished_at"] == "2025-03-30T00:00:00.000000Z"
    assert [c["lag_s"] for c in doc["capture"]] == [2.0] * len(samples)
    assert [c["error_rate"] for c in doc["consumers"] if c["consumer"] == "erp"] == [0.005]


def test_latency_percentiles_linear_interpolation() -> None:
    finished = T0 + dt.timedelta(seconds=200)
    # Commit times 1..100 s before `finished`, as a µs UTC array in shuffled order.
    stamps = [finished - dt.timedelta(seconds=s) for s in (*range(100, 50, -1), *range(1, 51))]
    array = pa.array(stamps, type=pa.timestamp("us", tz="UTC"))

    p50, p95, top = latency_percentiles(array, finished)
    # Linear between closest ranks: p = x[k] + f*(x[k+1] - x[k]) with k + f = q*(n - 1).
    assert p50 == pytest.approx(50.5, abs=1e-9)
    assert p95 == pytest.approx(95.05, abs=1e-9)
    assert top == 100.0
    chunked = pa.chunked_array([array[:30], array[30:]])
    assert latency_percentiles(chunked, finished) == (p50, p95, top)
    assert latency_percentiles(stamps, finished) == (p50, p95, top)
    nanos = array.cast(pa.timestamp("ns", tz="UTC"))
    assert latency_percentiles(nanos, finished) == (p50, p95, top)


def test_latency_inputs_and_edges() -> None:
    finished = dt.datetime(2025, 1, 1, 12, 0, 10, 500_000, tzinfo=dt.UTC)
    berlin = dt.timezone(dt.timedelta(hours=1))
    mixed = [
        dt.datetime(2025, 1, 1, 13, 0, 0, tzinfo=berlin),  # 12:00:00 UTC → 10.5 s
        dt.datetime(2025, 1, 1, 12, 0, 10),  # naive = UTC → 0.5 s
    ]
    assert latency_percentiles(mixed, finished) == (5.5, 10.0, 10.5)  # 0.5 + 0.95 · 10
    with_null = pa.array([mixed[0], None], type=pa.timestamp("us", tz="UTC"))
    assert latency_percentiles(with_null, finished) == (10.5, 10.5, 10.5)
    assert latency_percentiles([], finished) == (None, None, None)
    naive_array = pa.array([dt.datetime(2025, 1, 1, 12, 0, 0)], type=pa.timestamp("ms"))
    assert latency_percentiles(naive_array, finished) == (10.5, 10.5, 10.5)
    with pytest.raises(ValueError, match="timezone-aware"):
        latency_percentiles(mixed, finished.replace(tzinfo=None))
    with pytest.raises(TypeError, match="timestamps"):
        latency_percentiles(pa.array([1, 2]), finished)


def test_error_rate_definition() -> None:
    assert error_rate(0, 0) == 0.0  # nothing happened
    assert error_rate(0, 500) == 0.0
    assert error_rate(10, 990) == 0.01
    assert error_rate(7, 0) == 1.0  # everything failed: 100 %, not a division by zero
    with pytest.raises(ValueError):
        error_rate(-1, 10)


def test_invalid_metrics_are_refused() -> None:
    good = ExportMetrics("csv", key(1, 2), 1, 2, 1, 1, 0, 10, 0.1, T0)
    assert good.rows_per_s == 20.0
    assert dataclasses.replace(good, duration_s=0.0).rows_per_s is None
    for bad in (
        {"finished_at": T0.replace(tzinfo=None)},
        {"deleted": -1},
        {"lsn_from": 3},
        {"latency_p95_s": math.nan},
        {"duration_s": math.inf},
        {"consumer": ""},
        {"conflicts": {"queued": -2}},
    ):
        with pytest.raises(ValueError):
            dataclasses.replace(good, **bad)
    with pytest.raises(ValueError):
        CaptureSample(T0, 1, None, None, horizon_stall_s=math.nan)


def test_sample_capture_sees_the_read_horizon(source_url: str) -> None:
    source = engine_for(source_url, writer=True)
    init_demo_source(source)
    empty = sample_capture(source, now=T0)
    assert (empty.last_lsn, empty.waiting, empty.lag_s, empty.last_change_at) == (0, 0, 0.0, None)
    with source.begin() as conn:
        for i in range(3):
            insert(conn, f"s{i}")

    before = sample_capture(source)
    if source.dialect.name == "postgresql":
        # Committed but not yet sequenced: the exporters cannot see these changes yet.
        assert (before.last_lsn, before.waiting, before.last_sequenced_at) == (0, 3, None)
        assert before.horizon_stall_s > 0
        sequence(source)
    after = sample_capture(source)
    assert (after.last_lsn, after.waiting, after.horizon_stall_s) == (3, 0, 0.0)
    assert after.last_change_at == after.last_sequenced_at
    assert after.last_change_at is not None and after.last_change_at.tzinfo == dt.UTC


def test_capture_samples_older_than_the_retention_are_pruned(sqlite_metrics: Engine) -> None:
    start = T0 + dt.timedelta(days=400)  # after every seeded sample
    for day in range(0, 20, 2):
        record_capture_sample(
            sqlite_metrics, CaptureSample(start + dt.timedelta(days=day), day, None, None)
        )
    newest = start + dt.timedelta(days=18)
    kept = load_capture_samples(sqlite_metrics)
    assert kept, "the newest samples are kept"
    assert min(s.sampled_at for s in kept) >= newest - CAPTURE_SAMPLE_RETENTION
    assert [s.last_lsn for s in kept] == [4, 6, 8, 10, 12, 14, 16, 18]


def test_reconcile_outcomes_sum_per_system_and_a_rerun_replaces(sqlite_metrics: Engine) -> None:
    def run(system: str, lo: int, hi: int, at: dt.datetime, **outcomes: int) -> None:
        record_reconcile_metrics(
            sqlite_metrics, ReconcileMetrics(system, lo, hi, outcomes, 0, 0, at)
        )

    run("erp", 0, 3, T0, merged=2, queued=1)
    run("erp", 3, 5, T0 + dt.timedelta(hours=1), merged=1, echo=1)
    run("crm", 0, 2, T0, resolved=2)
    run("erp", 3, 5, T0 + dt.timedelta(hours=2), merged=1, echo=1, invalid=0)  # a re-run
    assert reconcile_outcomes(sqlite_metrics) == {
        "crm": {"resolved": 2},
        "erp": {"echo": 1, "merged": 3, "queued": 1},
    }
    later = reconcile_outcomes(sqlite_metrics, since=T0 + dt.timedelta(minutes=30))
    assert later == {"erp": {"echo": 1, "merged": 1}}
