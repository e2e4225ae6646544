"""`GET /metrics`: the dashboard's numbers in the Prometheus and OpenMetrics text formats,
parsed back with prometheus_client's own parsers."""

from __future__ import annotations

import datetime as dt
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text
from sqlalchemy.engine import Engine

from subscription_export.metrics.dashboard import serve_dashboard
from subscription_export.metrics.store import (
    DashboardData,
    ExportMetrics,
    load_dashboard_data,
    record_export_metrics,
)
from subscription_export_tests.metrics.seed import ERP, LAST_LSN, T0, WATERMARKS, key, seed

HOSTILE = 'a"b\\c\nd'  # a consumer name needing every label escape


@pytest.fixture
def data(sqlite_metrics: Engine) -> DashboardData:
    seed(sqlite_metrics)
    record_export_metrics(
        sqlite_metrics, ExportMetrics(HOSTILE, key(1, 10), 1, 10, 7, 2, 1, 123, 1.0, T0)
    )
    return load_dashboard_data(
        sqlite_metrics, {**WATERMARKS, HOSTILE: 10}, LAST_LSN, 15, 3, pending_pushes={"crm": 2}
    )


@pytest.fixture
def base(data: DashboardData) -> Iterator[str]:
    httpd = serve_dashboard(
        lambda: pytest.fail("/metrics must read the all-time loader"),  # type: ignore[arg-type,return-value]
        "127.0.0.1",
        0,
        background=True,
        load_totals=lambda: data,
    )
    host, port = httpd.server_address[:2]
    yield f"http://{host}:{port}"
    httpd.shutdown()
    httpd.server_close()


def _scrape(url: str, accept: str = "") -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


def _samples(text: str, parse=parse_text) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse(text)
        for s in family.samples
    }


def test_metrics_match_the_dashboard_data(base: str, data: DashboardData) -> None:
    content_type, body = _scrape(base + "/metrics")
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = _samples(body)
    assert samples[("subscription_export_last_lsn", ())] == LAST_LSN
    assert samples[("subscription_export_open_dead_letters", ())] == 15
    assert samples[("subscription_export_open_conflicts", ())] == 3
    assert samples[("subscription_export_pending_pushes", (("system", "crm"),))] == 2
    for status in data.consumers:
        labels = (("consumer", status.consumer),)
        assert samples[("subscription_export_watermark", labels)] == status.watermark
        assert samples[("subscription_export_lag", labels)] == LAST_LSN - status.watermark
        assert samples[("subscription_export_records_total", labels)] == status.records
        assert samples[("subscription_export_dead_letters_total", labels)] == status.dead_letters
    erp = (("consumer", "erp"),)
    assert samples[("subscription_export_records_total", erp)] == sum(r for r, _, _ in ERP)
    assert samples[("subscription_export_retries_total", erp)] == sum(r for _, r, _ in ERP)
    # the hostile name survives the label escaping unchanged
    assert samples[("subscription_export_bytes_written_total", (("consumer", HOSTILE),))] == 123


def test_openmetrics_when_the_scraper_asks_for_it(base: str) -> None:
    content_type, body = _scrape(base + "/metrics", "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    samples = _samples(body, parse_om)
    assert samples[("subscription_export_open_conflicts", ())] == 3
    assert samples[("subscription_export_records_total", (("consumer", "parquet"),))] > 0


def test_counters_cover_every_window_past_the_pages_per_consumer_cap(
    sqlite_metrics: Engine,
) -> None:
    """A day of 30 s windows is ~2,900 windows: the page draws the newest 2,000 per consumer,
    but the `_total` counters must keep counting every one, or they stop growing (windows) or
    fall when an old, bigger window leaves the page (records, bytes) - a counter reset to
    Prometheus, and a volume the operator never sees."""
    from subscription_export.metrics.prometheus import exposition

    windows = 2_001
    for i in range(windows):
        lo = 10 * i + 1
        record_export_metrics(
            sqlite_metrics,
            ExportMetrics(
                "parquet",
                key(lo, lo + 9),
                lo,
                lo + 9,
                created=10 if i == 0 else 1,  # the oldest window is the biggest
                updated=0,
                deleted=0,
                bytes=1_000 if i == 0 else 100,
                duration_s=1.0,
                finished_at=T0 + dt.timedelta(seconds=30 * i),
            ),
        )
    data = load_dashboard_data(sqlite_metrics, {"parquet": 10 * windows}, 10 * windows, 0, 0)
    _content_type, body = exposition(lambda: data)
    samples = _samples(body.decode())
    parquet = (("consumer", "parquet"),)
    assert samples[("subscription_export_windows_total", parquet)] == windows
    assert samples[("subscription_export_records_total", parquet)] == 10 + (windows - 1)
    assert samples[("subscription_export_bytes_written_total", parquet)] == 1_000 + 100 * (
        windows - 1
    )


@pytest.mark.integration
def test_capture_gauges_are_read_at_scrape_time_not_left_at_the_last_tick(
    pg_url: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """On PostgreSQL only the sensor tick (or a CLI cycle) sequences changes and records a
    capture sample. With the daemon down, changes pile up unsequenced: a scrape that shows the
    last tick's sample reports 0 changes waiting (and the watermarks' lag, over the sequenced
    log, stays 0 too): all fresh, while nothing is exported."""
    from subscription_export.cli.dashboard import dashboard_data
    from subscription_export.core.db import engine_for
    from subscription_export.core.settings import Settings
    from subscription_export.export.cut import cut_windows
    from subscription_export.metrics.prometheus import exposition
    from subscription_export.runtime import Project
    from subscription_export.source.demo_table import init_demo_source
    from subscription_export_tests.helpers import insert, writer

    init_demo_source(engine_for(pg_url, writer=True))
    settings = Settings(
        source_url=pg_url, state_url=f"sqlite:///{tmp_path / 'state.db'}", export_dir=tmp_path
    )
    project = Project(settings)
    with writer(pg_url).begin() as conn:
        insert(conn, "seen")
    cut_windows(project)  # the last sensor tick: sequences, samples capture (0 waiting)
    with writer(pg_url).begin() as conn:  # then the daemon stops; the application goes on
        for i in range(4):
            insert(conn, f"unseen{i}")

    _content_type, body = exposition(lambda: dashboard_data(project, None))

    samples = _samples(body.decode())
    assert samples[("subscription_export_capture_waiting", ())] == 4
