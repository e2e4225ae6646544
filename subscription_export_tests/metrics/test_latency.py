"""Latency percentiles of a window file: exact for ordinary windows, within 0.1% for huge ones."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from subscription_export.metrics.latency import file_latency_percentiles
from subscription_export.metrics.store import latency_percentiles

FINISHED = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def _window(path: Path, offsets_s: list[float]) -> pa.Array:
    stamps = pa.array(
        [FINISHED - dt.timedelta(seconds=s) for s in offsets_s], pa.timestamp("us", "UTC")
    )
    pq.write_table(pa.table({"_changed_at": stamps}), path, row_group_size=700)
    return stamps


def test_small_windows_are_exact(tmp_path: Path) -> None:
    stamps = _window(tmp_path / "w.parquet", [float(s) for s in range(1, 101)])
    assert file_latency_percentiles(tmp_path / "w.parquet", FINISHED) == (50.5, 95.05, 100.0)
    assert latency_percentiles(stamps, FINISHED) == (50.5, 95.05, 100.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_large_windows_stream_row_groups_within_a_tenth_of_a_percent(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    # Seconds to days, a few clock-skewed (negative) ones, in arbitrary order.
    offsets = [rng.lognormvariate(3, 2.5) for _ in range(5_000)] + [-0.004, -0.2]
    rng.shuffle(offsets)
    stamps = _window(tmp_path / "w.parquet", offsets)
    exact = latency_percentiles(stamps, FINISHED)
    streamed = file_latency_percentiles(tmp_path / "w.parquet", FINISHED, exact_rows=1_000)
    assert streamed[2] == exact[2]  # the maximum is exact
    for got, want in zip(streamed[:2], exact[:2], strict=True):
        assert got is not None and want is not None
        assert abs(got - want) <= 0.001 * abs(want) + 1e-3, (got, want)


def test_an_empty_window_has_no_latency(tmp_path: Path) -> None:
    _window(tmp_path / "w.parquet", [])
    assert file_latency_percentiles(tmp_path / "w.parquet", FINISHED, exact_rows=-1) == (
        None,
        None,
        None,
    )
