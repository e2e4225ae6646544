"""The dashboard's four charts, from the metrics store's rows: one series per consumer and metric.

Formats (parquet, csv, jsonl) come first, then destinations; every chart measures rows and time,
which both report. Each chart's x is every export's finish time, so the series line up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from subscription_export.formats.writers import FORMATS
from subscription_export.metrics.store import DashboardData, ExportMetrics

CHARTS = ("volume", "throughput", "latency", "error_rate")


def consumer_kind(consumer: str) -> str:
    """The consumer's kind: "format" for the file exports (parquet, csv, jsonl), else
    "destination".

    The store does not say which is which; every consumer other than the formats is a delivery to
    a configured destination (ERP, CRM, accounting, under whatever name the config gives it).
    Destinations record `bytes=0` (not measured for HTTP), so bytes are shown for formats only.
    """
    # Another captured table's files are `{table}.{format}` (core/datasets.py).
    return "format" if consumer.rpartition(".")[2] in FORMATS else "destination"


_T = TypeVar("_T")


def formats_first(items: Iterable[_T], name: Callable[[_T], str]) -> list[_T]:
    """Formats, then destinations, each group in its given order."""
    return sorted(items, key=lambda item: consumer_kind(name(item)) != "format")


@dataclass(frozen=True)
class Series:
    label: str
    consumer: str
    values: list[float | None]  # aligned with the chart's x; None where the consumer has no point
    dashed: bool = False
    kind: str = "format"  # or "destination" (see `consumer_kind`)


@dataclass(frozen=True)
class Chart:
    """One chart as plotted: x is each export's finished_at (epoch seconds, UTC)."""

    name: str
    title: str
    unit: str
    x: list[float]
    series: list[Series]
    note: str = ""  # a line under the title

    @property
    def points(self) -> int:
        return sum(v is not None for s in self.series for v in s.values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "unit": self.unit,
            "points": self.points,
            "x": self.x,
            "series": [
                {
                    "label": s.label,
                    "consumer": s.consumer,
                    "kind": s.kind,
                    "values": s.values,
                    "dashed": s.dashed,
                }
                for s in self.series
            ],
        }


_Metric = Callable[[ExportMetrics], float | None]


def _chart(
    name: str,
    title: str,
    unit: str,
    exports: list[ExportMetrics],
    consumers: list[str],
    metrics: list[tuple[str, _Metric, bool]],
    note: str = "",
) -> Chart:
    """One x entry per export (so two exports finishing in the same microsecond both show), and
    per consumer and metric a series that has a value only at that consumer's exports."""
    x = [e.finished_at.timestamp() for e in exports]
    series = []
    for consumer in consumers:
        for suffix, metric, dashed in metrics:
            values = [metric(e) if e.consumer == consumer else None for e in exports]
            label = f"{consumer} {suffix}" if suffix else consumer
            series.append(Series(label, consumer, values, dashed, consumer_kind(consumer)))
    return Chart(name, title, unit, x, series, note)


def build_charts(data: DashboardData) -> dict[str, Chart]:
    """The four charts, from the store's rows as loaded (oldest first).

    Every chart has one series per consumer, formats first, then destinations (each group in
    order of first appearance): all four measure rows and time, which formats and destinations
    both report. Bytes, which deliveries do not measure, are not charted.
    """
    exports = data.exports
    consumers = formats_first(dict.fromkeys(e.consumer for e in exports), lambda c: c)
    return {
        "volume": _chart(
            "volume",
            "Records per window",
            "records",
            exports,
            consumers,
            [("", lambda e: e.records, False)],
            "Rows, not bytes: formats count rows written to their files, destinations rows the"
            " system accepted (deliveries do not measure bytes).",
        ),
        "throughput": _chart(
            "throughput",
            "Throughput",
            "records/s",
            exports,
            consumers,
            [("", lambda e: e.rows_per_s, False)],
        ),
        "latency": _chart(
            "latency",
            "End-to-end latency (commit → finished)",
            "seconds",
            exports,
            consumers,
            [("p50", lambda e: e.latency_p50_s, False), ("p95", lambda e: e.latency_p95_s, True)],
        ),
        "error_rate": _chart(
            "error_rate",
            "Error rate (errors / (records + errors))",
            "%",
            exports,
            consumers,
            [("", lambda e: e.error_rate, False)],
        ),
    }
