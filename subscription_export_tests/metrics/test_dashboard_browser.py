"""The dashboard in a real headless Chromium: opened from a file and from the server, offline.

Checks what uPlot actually holds after drawing (not what the server meant to send) against the
rows read straight from the metrics table, and saves `artifacts/dashboard.png` for a human look.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect
from sqlalchemy.engine import Engine

from subscription_export.core.db import engine_for
from subscription_export.delivery.dead_letters import dead_letters
from subscription_export.metrics.dashboard import render_dashboard, serve_dashboard
from subscription_export.metrics.store import (
    DashboardData,
    ExportMetrics,
    error_rate,
    export_metrics,
    load_dashboard_data,
    record_export_metrics,
)
from subscription_export_tests.metrics.seed import LAST_LSN, T0, WATERMARKS, WINDOWS, key, seed
from subscription_export_tests.ui import CHROMIUM, CHROMIUM_ARGS, ensure_chromium, require_services
from subscription_export_tests.ui.dagster_processes import DagsterProject

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
EVIL = '<img src=x onerror="window.__pwned=1">'
FORMATS = ("parquet", "csv", "jsonl")
DESTINATIONS = ("erp", "crm", "accounting")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = ensure_chromium()
    if missing:
        if require_services():
            pytest.fail(missing + " and SUBSCRIPTION_EXPORT_REQUIRE_SERVICES=1")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def store(sqlite_metrics: Engine) -> Engine:
    seed(sqlite_metrics)
    evil = ExportMetrics(EVIL, key(1, 1000), 1, 1000, 7, 0, 0, 1, 0.5, T0)
    record_export_metrics(sqlite_metrics, evil)
    return sqlite_metrics


def _load(engine: Engine) -> Callable[[], DashboardData]:
    return lambda: load_dashboard_data(engine, WATERMARKS, LAST_LSN, 15, 3)


def _expected(engine: Engine) -> dict[str, set[tuple[str, float, float]]]:
    """(series label, finished_at, value) per chart, straight from the table, nulls left out."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(export_metrics)).all()
    charts: dict[str, set[tuple[str, float, float]]] = {
        name: set() for name in ("volume", "throughput", "latency", "error_rate")
    }
    for r in rows:
        x = r.finished_at.replace(tzinfo=T0.tzinfo).timestamp()
        charts["volume"].add((r.consumer, x, r.records))
        charts["error_rate"].add((r.consumer, x, error_rate(r.errors, r.records)))
        if r.rows_per_s is not None:
            charts["throughput"].add((r.consumer, x, r.rows_per_s))
        for stat in ("p50", "p95"):
            value = getattr(r, f"latency_{stat}_s")
            if value is not None:
                charts["latency"].add((f"{r.consumer} {stat}", x, value))
    return charts


def _check_charts(page: Any, expected: dict[str, set[tuple[str, float, float]]]) -> None:
    """Every chart drew a canvas holding exactly the store's points."""
    page.wait_for_function("() => window.__DASHBOARD__ && window.__DASHBOARD__.rendered.error_rate")
    for name, points in expected.items():
        chart = page.locator(f'[data-chart="{name}"]')
        assert chart.locator("canvas").count() == 1, f"{name}: no canvas"
        box = chart.locator("canvas").bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 100
        assert chart.get_attribute("data-points") == str(len(points))
        assert chart.get_attribute("data-rendered-points") == str(len(points))
        rendered = page.evaluate(f"window.__DASHBOARD__.rendered[{name!r}]")
        xs, *columns = rendered["data"]
        plotted = {
            (label, x, y)
            for label, ys in zip(rendered["labels"], columns, strict=True)
            for x, y in zip(xs, ys, strict=True)
            if y is not None
        }
        assert plotted == points, name


def _check_page(page: Any, expected: dict[str, set[tuple[str, float, float]]]) -> None:
    _check_charts(page, expected)
    assert page.evaluate("window.__pwned") is None  # the <img onerror> never became markup
    assert page.locator("table.consumers td", has_text=EVIL).count() == 1
    assert page.locator('[data-card="open-dead-letters"] .value').inner_text() == "15"


def _offline_page(browser: Any, allowed_prefix: str) -> tuple[Any, Any, list[str]]:
    """A page that records every request and every script error."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on(
        "request",
        lambda req: req.url.startswith(allowed_prefix) or problems.append(f"request {req.url}"),
    )
    return context, page, problems


def test_dashboard_file_renders_store_values(browser: Any, store: Engine, tmp_path: Path) -> None:
    out = tmp_path / "dashboard.html"
    out.write_text(render_dashboard(_load(store)()), encoding="utf-8")
    context, page, problems = _offline_page(browser, out.as_uri())
    try:
        page.goto(out.as_uri())
        _check_page(page, _expected(store))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    finally:
        context.close()
    assert problems == []


def test_served_dashboard_renders_fresh_store_values(browser: Any, store: Engine) -> None:
    server = serve_dashboard(_load(store), "127.0.0.1", 0, refresh_s=10, background=True)
    host, port = server.server_address[:2]
    base = f"http://{host}:{port}"
    context, page, problems = _offline_page(browser, base + "/")
    try:
        page.goto(base + "/")
        _check_page(page, _expected(store))
        # A new export shows up on the next load: the server reads the store per request.
        late = ExportMetrics("crm", key(1, 1000), 1, 1000, 40, 2, 0, 1, 2.0, T0)
        record_export_metrics(store, late)
        page.reload()
        _check_page(page, _expected(store))
        assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "10"
        data = page.request.get(base + "/data.json").json()
        assert {e["consumer"] for e in data["exports"]} >= {"crm", "erp", EVIL}
    finally:
        context.close()
        server.shutdown()
        server.server_close()
    assert problems == []


def _delivery(consumer: str, i: int, spacing: dt.timedelta, dead: int = 0) -> ExportMetrics:
    """Window `i` as a format (bytes written) or a destination delivery (bytes=0, HTTP)."""
    lo, hi = WINDOWS[i]
    offset = (FORMATS + DESTINATIONS).index(consumer)
    return ExportMetrics(
        consumer=consumer,
        window_key=key(lo, hi),
        lsn_from=lo,
        lsn_to=hi,
        created=hi - lo + 1 - dead,
        updated=0,
        deleted=0,
        bytes=0 if consumer in DESTINATIONS else 40_000,
        duration_s=0.5 + offset,
        finished_at=T0 + i * spacing + dt.timedelta(seconds=2 * offset),
        latency_p50_s=1.0 + offset,
        latency_p95_s=2.0 + offset,
        dead_letters=dead,
    )


def _open(browser: Any, engine: Engine, tmp_path: Path) -> tuple[Any, Any, list[str]]:
    out = tmp_path / "dashboard.html"
    out.write_text(render_dashboard(_load(engine)()), encoding="utf-8")
    context, page, problems = _offline_page(browser, out.as_uri())
    page.goto(out.as_uri())
    page.wait_for_function("() => window.__DASHBOARD__ && window.__DASHBOARD__.rendered.error_rate")
    return context, page, problems


def _check_x_labels_readable(page: Any, min_ticks: int = 2) -> None:
    """Every chart's time labels are distinct and far enough apart not to overlap."""
    for name, rendered in page.evaluate("window.__DASHBOARD__.rendered").items():
        x = rendered["axes"][0]
        ticks = [(p, w, t) for p, w, t in zip(x["pos"], x["widths"], x["labels"], strict=True) if t]
        assert len(ticks) >= min_ticks, (name, x)
        assert len({t for _p, _w, t in ticks}) == len(ticks), (name, x["labels"])
        for (p1, w1, t1), (p2, w2, t2) in itertools.pairwise(ticks):
            assert p2 - p1 >= (w1 + w2) / 2 + 8, f"{name}: {t1!r} and {t2!r} overlap"


# (dead letters per window, for every consumer), minutes between windows, highest % tick allowed
RATE_CASES = {
    "all zero": ([0, 0, 0, 0], 0.75, 1.0),
    "small": ([0, 5, 10, 0], 20, 2.0),
    "everything failed": ([1000, 0, 300, 0], 24 * 60, 100.0),
}


@pytest.mark.parametrize("case", list(RATE_CASES))
def test_error_rate_axis_is_a_percentage_range(
    browser: Any, sqlite_metrics: Engine, tmp_path: Path, case: str
) -> None:
    """Rates are fractions in [0, 1]: ticks read 0-1% when nothing failed, never above 100%,
    and the highest rate is on the chart. Time labels stay readable, seconds to days apart."""
    dead, minutes, top_allowed = RATE_CASES[case]
    spacing = dt.timedelta(minutes=minutes)
    for i in range(len(WINDOWS)):
        for consumer in FORMATS + DESTINATIONS:
            failed = dead[i] if consumer == "erp" else 0
            record_export_metrics(sqlite_metrics, _delivery(consumer, i, spacing, failed))
    context, page, problems = _open(browser, sqlite_metrics, tmp_path)
    try:
        y = page.evaluate("window.__DASHBOARD__.rendered.error_rate.axes[1]")
        _check_x_labels_readable(page)
    finally:
        context.close()
    assert problems == []
    labels = [t for t in y["labels"] if t]
    assert labels and all(t.endswith("%") for t in labels), labels
    shown = [float(t.rstrip("%")) for t in labels]
    assert shown == sorted(shown) and shown[0] == 0.0
    assert max(shown) <= top_allowed <= 100.0, labels
    highest = max(error_rate(d, 1000 - d) for d in dead) * 100
    assert max(shown) >= highest  # the worst window is inside the axis, not clipped
    # Each label is its tick's value as a percentage (0.01 -> "1.0%", not "100.0%").
    for value, text in zip(y["values"], y["labels"], strict=True):
        assert text is None or abs(float(text.rstrip("%")) - value * 100) < 1e-6, (value, text)


def test_destinations_chart_beside_formats(browser: Any, store: Engine, tmp_path: Path) -> None:
    """erp (seeded), crm and accounting deliveries are series of all four charts, the way the
    formats are; the table gives their kind and no bytes (HTTP deliveries do not measure them)."""
    for i in range(len(WINDOWS)):
        for consumer in ("jsonl", "crm", "accounting"):
            record_export_metrics(store, _delivery(consumer, i, dt.timedelta(minutes=10)))
    expected = _expected(store)
    context, page, problems = _open(browser, store, tmp_path)
    try:
        _check_charts(page, expected)
        _check_x_labels_readable(page)
        rendered = page.evaluate("window.__DASHBOARD__.rendered")
        series = page.evaluate("window.__DASHBOARD__.charts")
        kinds = {
            row.locator("td").nth(0).inner_text(): row.locator("td").nth(1).inner_text()
            for row in page.locator("table.consumers tbody tr").all()
        }
        bytes_column = page.locator("table.consumers th").all_text_contents().index("bytes written")
        written = {
            row.locator("td").nth(0).inner_text(): row.locator("td").nth(bytes_column).inner_text()
            for row in page.locator("table.consumers tbody tr").all()
        }
    finally:
        context.close()
    assert problems == []
    for name in ("volume", "throughput", "error_rate"):
        labels = rendered[name]["labels"]
        assert set(FORMATS + DESTINATIONS) <= set(labels), (name, labels)
        # formats first, then destinations
        assert labels.index("jsonl") < min(labels.index(d) for d in DESTINATIONS), labels
        by_label = {s["label"]: s["kind"] for s in series[name]["series"]}
        assert {c: by_label[c] for c in FORMATS + DESTINATIONS} == {
            **dict.fromkeys(FORMATS, "format"),
            **dict.fromkeys(DESTINATIONS, "destination"),
        }
    latency = rendered["latency"]["labels"]
    assert {f"{d} {p}" for d in DESTINATIONS for p in ("p50", "p95")} <= set(latency)
    assert {kinds[c] for c in FORMATS} == {"format"}
    assert {kinds[c] for c in DESTINATIONS} == {"destination"}
    assert {written[c] for c in DESTINATIONS} == {"—"}
    assert written["jsonl"] == "160,000" and written["parquet"] == "206,000"


@pytest.mark.slow
def test_dashboard_after_a_demo_run_matches_the_store(browser: Any, tmp_path: Path) -> None:
    """`subscription-export demo` (a tenth of its default size: 5 windows through Dagster, all
    formats, the sandbox ERP/CRM/accounting), then `dashboard --out`, opened offline."""
    project = DagsterProject.create(tmp_path / "project", window_max_changes=1_000)
    project.cli(
        *("demo", "--subscriptions", "500", "--changes", "5000", "--window-size", "1000"),
        "--quiet",
        timeout_s=240,
    )
    out = tmp_path / "dashboard.html"
    project.cli("dashboard", "--out", str(out))
    state = engine_for(project.settings.state_url)
    expected = _expected(state)
    consumers = {label for label, _x, _y in expected["volume"]}
    # Formats and destination deliveries both record one row per window.
    assert set(FORMATS + DESTINATIONS) <= consumers
    assert all(len(expected[name]) >= 5 * 6 for name in ("volume", "error_rate"))  # 5 windows
    with state.connect() as conn:
        open_letters = conn.execute(
            sa.select(sa.func.count()).where(dead_letters.c.status == "open")
        ).scalar_one()
    context, page, problems = _offline_page(browser, out.as_uri())
    try:
        page.goto(out.as_uri())
        _check_charts(page, expected)
        # The demo's windows finish within seconds: the axis may hold a single time label.
        _check_x_labels_readable(page, min_ticks=1)
        y = page.evaluate("window.__DASHBOARD__.rendered.error_rate.axes[1]")
        assert all(0 <= v <= 1 for v in y["values"]), y
        expect(page.locator('[data-card="open-dead-letters"] .value')).to_have_text(
            str(open_letters)
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-demo.png"), full_page=True)
    finally:
        context.close()
    assert problems == []
