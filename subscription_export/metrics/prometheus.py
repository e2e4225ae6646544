"""The dashboard's numbers for Prometheus: `GET /metrics` on the dashboard server.

A collector, not module-level metric objects: every scrape reads the metrics store afresh (the
exporters write it from other processes), so the values are whatever the state DB says now.
Totals are over all recorded exports, so the `_total` series only grow; `--since-hours` limits
the page, never /metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from subscription_export.metrics.records import DashboardData

PREFIX = "subscription_export"
_CONSUMER_TOTALS = {  # metric suffix -> (ConsumerStatus attribute, help)
    "records": ("records", "Records exported or delivered (created, updated, deleted, snapshot)."),
    "errors": ("errors", "Records that failed (dead-lettered, quarantined or refused)."),
    "retries": ("retries", "Delivery attempts retried after a transient failure."),
    "dead_letters": ("dead_letters", "Records that became dead letters."),
    "quarantined": ("quarantined", "Changes quarantined with a bad value."),
    "windows": ("windows", "Windows exported or delivered."),
}


class DashboardCollector(Collector):
    def __init__(self, load: Callable[[], DashboardData]) -> None:
        self.load = load

    def collect(self) -> Iterator[Metric]:
        data = self.load()
        yield _gauge("last_lsn", "Last sequenced LSN of the change log.", data.last_lsn)
        yield _gauge(
            "open_dead_letters", "Dead letters waiting for replay.", data.open_dead_letters
        )
        yield _gauge("open_conflicts", "Conflicts waiting for a person.", data.open_conflicts)
        yield from self._consumers(data)
        volume = CounterMetricFamily(
            f"{PREFIX}_bytes_written", "Bytes of export files written.", labels=["consumer"]
        )
        # Every recorded export's bytes (summed by the store), not only the exports loaded.
        for status in sorted(data.consumers, key=lambda s: s.consumer):
            if status.windows:
                volume.add_metric([status.consumer], status.bytes)
        yield volume
        pushes = GaugeMetricFamily(
            f"{PREFIX}_pending_pushes", "Reconcile pushes waiting to be sent.", labels=["system"]
        )
        for system, count in data.pending_pushes.items():
            pushes.add_metric([system], count)
        yield pushes
        outcomes = CounterMetricFamily(
            f"{PREFIX}_remote_edits",
            "Remote edits reconciled, by outcome.",
            labels=["system", "outcome"],
        )
        for system, counts in sorted(data.reconcile.items()):
            for outcome, count in sorted(counts.items()):
                outcomes.add_metric([system, outcome], count)
        yield outcomes
        if data.capture:
            latest = data.capture[-1]
            yield _gauge("capture_lag_seconds", "Sequenced log behind newest change.", latest.lag_s)
            yield _gauge("capture_waiting", "Committed changes without an LSN yet.", latest.waiting)

    def _consumers(self, data: DashboardData) -> Iterator[Metric]:
        watermark = GaugeMetricFamily(
            f"{PREFIX}_watermark", "Last LSN a consumer has taken.", labels=["consumer"]
        )
        lag = GaugeMetricFamily(
            f"{PREFIX}_lag", "LSNs between the log's end and the watermark.", labels=["consumer"]
        )
        latency = GaugeMetricFamily(
            f"{PREFIX}_latency_p95_seconds",
            "Commit-to-export latency p95 of the consumer's newest measured window.",
            labels=["consumer"],
        )
        totals = {
            name: CounterMetricFamily(f"{PREFIX}_{name}", text, labels=["consumer"])
            for name, (_attr, text) in _CONSUMER_TOTALS.items()
        }
        for status in data.consumers:
            if status.watermark is not None:
                watermark.add_metric([status.consumer], status.watermark)
            if status.lag is not None:
                lag.add_metric([status.consumer], status.lag)
            if status.last_latency_p95_s is not None:
                latency.add_metric([status.consumer], status.last_latency_p95_s)
            for name, (attr, _text) in _CONSUMER_TOTALS.items():
                totals[name].add_metric([status.consumer], getattr(status, attr))
        yield from (watermark, lag, latency, *totals.values())


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", text, value=value)


def exposition(load: Callable[[], DashboardData], accept: str = "") -> tuple[str, bytes]:
    """(content type, body) of one scrape; OpenMetrics when the scraper asks for it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DashboardCollector(load))
    if "application/openmetrics-text" in accept:
        return OPENMETRICS_TYPE, generate_openmetrics(registry)
    # 0.0.4: what every Prometheus version scrapes; our names and labels need nothing newer.
    return CONTENT_TYPE_PLAIN_0_0_4, generate_latest(registry)
