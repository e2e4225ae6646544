"""Commit-to-export latency percentiles of a window's Parquet file, in bounded memory.

Up to `EXACT_ROWS` rows the `_changed_at` column is read whole and the percentiles are exact
(`store.latency_percentiles`: linear interpolation between closest ranks). Larger windows are
read one row group at a time into a histogram of log-spaced bins (`BIN_GROWTH` = 0.1% wide),
so memory stays flat however large the window is: p50 and p95 are then within 0.1% of the
exact values and the maximum is exact. (Reading 3M timestamps whole and sorting them took
~100 MB of the exporter's peak.)
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
from upath import UPath

from subscription_export.formats.parquet_batches import parquet_batches
from subscription_export.formats.storage import open_parquet
from subscription_export.metrics.store import latency_percentiles

EXACT_ROWS = 1_000_000
BIN_GROWTH = 1.001
_FLOOR_S = 1e-3  # latencies below (including clock-skew negatives) share one bin
_CEILING_S = 1e9  # ~30 years
_EDGES = _FLOOR_S * BIN_GROWTH ** np.arange(
    math.ceil(math.log(_CEILING_S / _FLOOR_S) / math.log(BIN_GROWTH)) + 1
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Percentiles = tuple[float | None, float | None, float | None]


def file_latency_percentiles(
    path: Path | UPath, finished_at: dt.datetime, exact_rows: int = EXACT_ROWS
) -> Percentiles:
    """(p50, p95, max) seconds from each row's `_changed_at` to `finished_at`."""
    with open_parquet(path) as source:
        if source.metadata.num_rows <= exact_rows:
            return latency_percentiles(source.read(columns=["_changed_at"])[0], finished_at)
    histogram = _Histogram()
    for batch in parquet_batches(path, columns=["_changed_at"]):
        histogram.add(_seconds(batch.column(0), finished_at))
    return histogram.percentile(0.5), histogram.percentile(0.95), histogram.maximum


def _seconds(stamps: pa.Array, finished_at: dt.datetime) -> np.ndarray:
    micros = stamps.cast(pa.timestamp("us", "UTC")).cast(pa.int64()).drop_null()
    finished = (finished_at - _EPOCH) // dt.timedelta(microseconds=1)
    return (finished - micros.to_numpy()) / 1e6


class _Histogram:
    """Counts per log-spaced bin, plus the exact minimum and maximum."""

    def __init__(self) -> None:
        self.counts = np.zeros(len(_EDGES) + 1, dtype=np.int64)  # [under floor, bins..., over]
        self.total = 0
        self.minimum: float | None = None
        self.maximum: float | None = None

    def add(self, seconds: np.ndarray) -> None:
        if not len(seconds):
            return
        self.counts += np.bincount(np.searchsorted(_EDGES, seconds), minlength=len(self.counts))
        self.total += len(seconds)
        low, high = float(seconds.min()), float(seconds.max())
        self.minimum = low if self.minimum is None else min(self.minimum, low)
        self.maximum = high if self.maximum is None else max(self.maximum, high)

    def percentile(self, q: float) -> float | None:
        """Linear interpolation between the closest ranks, as the exact path; each of the two
        ranked values is placed inside its bin (so it is within one bin width)."""
        if not self.total or self.minimum is None or self.maximum is None:
            return None
        rank = (self.total - 1) * q
        below = math.floor(rank)
        cumulative = np.cumsum(self.counts)
        low_value = self._ranked(below, cumulative)
        high_value = self._ranked(min(below + 1, self.total - 1), cumulative)
        return low_value + (rank - below) * (high_value - low_value)

    def _ranked(self, rank: int, cumulative: np.ndarray) -> float:
        """The value of 0-based `rank`, spread evenly over its bin (clamped to min and max)."""
        assert self.minimum is not None and self.maximum is not None
        index = int(np.searchsorted(cumulative, rank, side="right"))
        before = int(cumulative[index - 1]) if index else 0
        low = self.minimum if index == 0 else float(_EDGES[index - 1])
        high = self.maximum if index >= len(_EDGES) else float(_EDGES[index])
        low, high = max(low, self.minimum), min(high, self.maximum)
        return low + (high - low) * (rank - before + 0.5) / int(self.counts[index])
