"""The dashboard's HTML and server without a browser: charts, escaping, CSP, HTTP routes."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from subscription_export.metrics.charts import build_charts
from subscription_export.metrics.dashboard import render_dashboard, serve_dashboard
from subscription_export.metrics.store import (
    DashboardData,
    ExportMetrics,
    load_dashboard_data,
    record_export_metrics,
)
from subscription_export_tests.metrics.seed import LAST_LSN, T0, WATERMARKS, key, seed

EVIL = '</script><img src=x onerror="window.__pwned=1">&amp;'


@pytest.fixture
def data(sqlite_metrics: Engine) -> DashboardData:
    seed(sqlite_metrics)
    return load_dashboard_data(sqlite_metrics, WATERMARKS, LAST_LSN, 15, 3)


def _payload(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', page)
    assert block is not None
    return json.loads(block.group(1))


def test_charts_hold_the_store_values(data: DashboardData) -> None:
    charts = build_charts(data)
    assert list(charts) == ["volume", "throughput", "latency", "error_rate"]
    x = [e.finished_at.timestamp() for e in data.exports]
    for chart in charts.values():
        assert chart.x == x
    volume = {s.consumer: s.values for s in charts["volume"].series}
    erp_volume = [v for v in volume["erp"] if v is not None]
    assert erp_volume == [990, 1000, 995, 0]
    # One series per consumer, with a value exactly at that consumer's exports.
    for consumer, values in volume.items():
        assert [v is not None for v in values] == [e.consumer == consumer for e in data.exports]
    latency = [s.label for s in charts["latency"].series]
    assert latency == [f"{c} {p}" for c in ("parquet", "csv", "erp") for p in ("p50", "p95")]
    # erp's empty last window has no latency and no throughput: a gap, not a zero.
    assert charts["latency"].points == 2 * 12 - 2
    assert charts["throughput"].points == 12 - 1
    erp_rates = next(s for s in charts["error_rate"].series if s.consumer == "erp").values
    assert [v for v in erp_rates if v is not None] == [0.01, 0.0, 0.005, 0.0]


def test_destinations_chart_beside_formats(sqlite_metrics: Engine) -> None:
    """Deliveries are series of every chart (rows and time, not bytes), after the formats."""
    first = T0 - dt.timedelta(minutes=1)  # crm finished before any format: still listed after
    record_export_metrics(
        sqlite_metrics, ExportMetrics("crm", key(1, 1000), 1, 1000, 900, 0, 0, 0, 3.0, first)
    )
    seed(sqlite_metrics)
    charts = build_charts(load_dashboard_data(sqlite_metrics, WATERMARKS, LAST_LSN, 0, 0))
    for chart in charts.values():
        kinds = {s.consumer: s.kind for s in chart.series}
        assert kinds == {
            "parquet": "format",
            "csv": "format",
            "erp": "destination",
            "crm": "destination",
        }
        assert [s.consumer for s in chart.series][:: len(chart.series) // 4] == [
            "parquet",
            "csv",
            "crm",
            "erp",
        ]
    assert charts["volume"].note and "not bytes" in charts["volume"].note


def test_page_is_self_contained_and_consistent(data: DashboardData) -> None:
    page = render_dashboard(data)

    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing to fetch
    assert 'http-equiv="refresh"' not in page
    payload = _payload(page)
    assert payload["charts"]["volume"]["points"] == 12
    for name, chart in build_charts(data).items():
        assert f'data-chart="{name}" data-points="{chart.points}"' in page
        assert payload["charts"][name]["series"] == chart.as_dict()["series"]
    assert "<td>erp</td><td>destination</td><td>2,000</td><td>2,500</td>" in page
    # Bytes for formats only: deliveries record 0 (not measured), which must not read as "none".
    assert "<td>parquet</td><td>format</td><td>4,000</td><td>500</td><td>4</td>" in page
    assert "<td>206,000</td>" in page  # parquet's bytes, 50,000 + 51,000 + 52,000 + 53,000
    assert '<td><span title="not measured for HTTP deliveries">—</span></td>' in page
    assert 'data-card="open-dead-letters"><div class="value">15<' in page


def test_csp_allows_exactly_the_inline_scripts(data: DashboardData) -> None:
    page = render_dashboard(data)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    assert csp is not None
    policy = csp.group(1).replace("&#x27;", "'")
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    assert len(scripts) == 2  # uPlot, then the page's own
    for script in scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy
    assert "connect-src 'none'" in policy and "default-src 'none'" in policy


def test_consumer_names_cannot_inject_html(sqlite_metrics: Engine) -> None:
    record_export_metrics(
        sqlite_metrics, ExportMetrics(EVIL, key(1, 10), 1, 10, 10, 0, 0, 1, 1.0, T0)
    )
    page = render_dashboard(load_dashboard_data(sqlite_metrics, {EVIL: 10}, 10, 0, 0))

    assert "<img" not in page
    assert page.count("</script>") == 3  # the JSON block and the two scripts, nothing more
    assert (
        "<td>&lt;/script&gt;&lt;img src=x onerror=&quot;window.__pwned=1&quot;&gt;&amp;amp;" in page
    )
    labels = [s["label"] for s in _payload(page)["charts"]["volume"]["series"]]
    assert labels == [EVIL]  # JSON.parse gives the name back unchanged


@pytest.fixture
def server(data: DashboardData) -> Iterator[str]:
    calls = {"n": 0}

    def load() -> DashboardData:
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("state database went away")
        return data

    httpd = serve_dashboard(load, "127.0.0.1", 0, refresh_s=7, background=True)
    host, port = httpd.server_address[:2]
    yield f"http://{host}:{port}"
    httpd.shutdown()
    httpd.server_close()


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_server_routes(server: str, data: DashboardData) -> None:
    status, kind, page = _get(server + "/")
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert '<meta http-equiv="refresh" content="7">' in page
    status, kind, body = _get(server + "/data.json?x=1")
    assert (status, kind) == (200, "application/json")
    assert json.loads(body) == json.loads(data.to_json())
    assert _get(server + "/nope")[0] == 404
    status, _, body = _get(server + "/data.json")  # load() now fails
    assert status == 500 and "state database went away" in body


def test_empty_store_renders(sqlite_metrics: Engine) -> None:
    data = load_dashboard_data(sqlite_metrics, {"parquet": 0}, 0, 0, 0, since=T0)
    page = render_dashboard(data)
    assert page.count("no exports recorded yet") == 4
    assert "no capture samples yet" in page
    assert data.generated_at.tzinfo == dt.UTC


def test_remote_edits_by_outcome_are_shown_per_system(sqlite_metrics: Engine) -> None:
    from subscription_export.metrics.store import ReconcileMetrics, record_reconcile_metrics

    seed(sqlite_metrics)
    counts = {"merged": 4, "queued": 2, "echo": 1}
    record_reconcile_metrics(sqlite_metrics, ReconcileMetrics("erp", 0, 7, counts, 4, 1, T0))
    page = render_dashboard(load_dashboard_data(sqlite_metrics, WATERMARKS, LAST_LSN, 0, 2))

    assert _payload(page)["reconcile"] == {"erp": {"echo": 1, "merged": 4, "queued": 2}}
    table = re.search(r'<table class="reconcile">(.*?)</table>', page, re.S)
    assert table is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table.group(1))
    # system, merged, resolved, queued, echo, no_change, already_applied, invalid
    assert cells == ["erp", "4", "0", "2", "1", "0", "0", "0"]
