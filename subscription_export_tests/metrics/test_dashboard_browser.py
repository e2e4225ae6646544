"""The dashboard in a real headless Chromium: opened from a file and from the server, offline.

Checks what uPlot actually holds after drawing (not what the server meant to send) against the
rows read straight from the metrics table, and saves `artifacts/dashboard.png` for a human look.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect
from sqlalchemy.engine import Engine

from subscription_export.db import engine_for
from subscription_export.metrics.dashboard import render_dashboard, serve_dashboard
from subscription_export.metrics.store import (
    DashboardData,
    ExportMetrics,
    error_rate,
    export_metrics,
    load_dashboard_data,
    record_export_metrics,
)
from subscription_export.sync.dead_letters import dead_letters
from subscription_export_tests.metrics.seed import LAST_LSN, T0, WATERMARKS, key, seed
from subscription_export_tests.ui.dagster_processes import DagsterProject

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
EVIL = '<img src=x onerror="window.__pwned=1">'


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (run scripts/ensure-chromium.sh)"
        if os.environ.get("SUBSCRIPTION_EXPORT_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " and SUBSCRIPTION_EXPORT_REQUIRE_SERVICES=1")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
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
    consumers = {label for points in expected.values() for label, _x, _y in points}
    # Formats record one row per window. (Deliveries report to Dagster's metadata only so far.)
    assert {"parquet", "csv", "jsonl"} <= consumers
    assert all(len(expected[name]) >= 5 * 3 for name in ("volume", "error_rate"))  # 5 windows
    with state.connect() as conn:
        open_letters = conn.execute(
            sa.select(sa.func.count()).where(dead_letters.c.status == "open")
        ).scalar_one()
    context, page, problems = _offline_page(browser, out.as_uri())
    try:
        page.goto(out.as_uri())
        _check_charts(page, expected)
        expect(page.locator('[data-card="open-dead-letters"] .value')).to_have_text(
            str(open_letters)
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-demo.png"), full_page=True)
    finally:
        context.close()
    assert problems == []
