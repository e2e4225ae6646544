"""Regenerate the README's screenshots: docs/images/dagster-*.png and docs/images/dashboard.png.

    .venv/bin/python scripts/screenshots.py [--out docs/images] [--dashboard-only]

Seeds a throwaway project exactly like `make demo` (50,000 changes, five windows of 10,000,
delivered to the sandbox ERP/CRM/accounting systems) in a temporary folder, renders its metrics
dashboard, starts `dagster-webserver` and `dagster-daemon` on it, then walks the UI journeys in
headless Chromium: the asset lineage, the partitions page, a backfill of three windows launched by
clicks, and a `change_log_sensor` run for changes written afterwards. Needs the test extras
(playwright) and /usr/bin/chromium (scripts/ensure-chromium.sh). `--dashboard-only` stops after
docs/images/dashboard.png (same demo run, no Dagster services, a few minutes shorter).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' UI helpers

from playwright.sync_api import Browser, Page, sync_playwright

from subscription_export.state.windows import Window
from subscription_export_tests.ui import (
    SENSOR,
    WINDOW_ASSETS,
    ensure_chromium,
    launch_backfill,
    launch_browser,
    new_page,
    open_backfill,
    open_downstream_lineage,
    open_partition,
    open_partitions,
    open_sensor,
)
from subscription_export_tests.ui.dagster_processes import (
    REPO,
    DagsterProject,
    DagsterServices,
)

DEMO_WINDOW = 10_000  # `subscription-export demo` cuts windows of this many changes
NEW_CHANGES = 2_500  # written after the UI is up, for the sensor to pick up
TALL = {"width": 1280, "height": 1000}


def save(page: Page, path: Path, full_page: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    report(path)
    return path


def report(path: Path) -> None:
    print(f"{path}  {path.stat().st_size // 1024} KB")


def save_dashboard(browser: Browser, dashboard: Path, out: Path) -> Path:
    page = new_page(browser, viewport={"width": 1400, "height": 900})
    page.goto(dashboard.as_uri())
    # Wait for the axes too: they are recorded after uPlot's first draw.
    page.wait_for_function(
        "() => window.__DASHBOARD__ && window.__DASHBOARD__.rendered.error_rate"
        " && window.__DASHBOARD__.rendered.error_rate.axes"
    )
    return save(page, out / "dashboard.png", full_page=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument(
        "--dashboard-only",
        action="store_true",
        help="Only dashboard.png (after the same demo run); skip the Dagster UI journeys.",
    )
    args = parser.parse_args()
    out: Path = args.out
    problem = ensure_chromium()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        root = Path(tmp)
        project = DagsterProject.create(root / "project", window_max_changes=DEMO_WINDOW)
        print(project.cli("demo", "--quiet", timeout_s=900))
        dashboard = root / "dashboard.html"
        project.cli("dashboard", "--out", str(dashboard))
        if args.dashboard_only:
            with sync_playwright() as pw:
                browser = launch_browser(pw)
                save_dashboard(browser, dashboard, out)
                browser.close()
            return 0
        windows = project.windows()
        keys = [w.key for w in windows]
        with DagsterServices(project, root / "logs") as services, sync_playwright() as pw:
            browser = launch_browser(pw)
            save_dashboard(browser, dashboard, out)

            base = services.url
            page = new_page(browser, timeout_ms=180_000, viewport=TALL)
            open_downstream_lineage(page, base, WINDOW_ASSETS[0], ["cdc", "destinations"])
            save(page, out / "dagster-asset-lineage.png")

            page = new_page(browser, timeout_ms=180_000)
            open_partitions(page, base, WINDOW_ASSETS[0], keys)
            open_partition(page, keys[2])
            save(page, out / "dagster-partitions.png")

            launch_png = out / "dagster-backfill-launch.png"
            backfill_id = launch_backfill(page, base, keys[1:4], launch_png)
            report(launch_png)
            project.write_changes(NEW_CHANGES, seed=11)  # the sensor's turn, meanwhile
            backfill = services.wait_for_backfill(backfill_id, timeout_s=600)
            if backfill["status"] != "COMPLETED_SUCCESS":
                raise RuntimeError(f"backfill {backfill_id} ended {backfill['status']}")
            open_backfill(page, base, backfill_id, partitions=3)
            save(page, out / "dagster-backfill.png")

            new = Window(windows[-1].hi + 1, windows[-1].hi + NEW_CHANGES)
            tags = {"dagster/sensor_name": SENSOR, "dagster/partition": new.key}
            run = services.wait_for_run(tags, timeout_s=300)
            open_sensor(page, base, run["runId"], cursor=new.hi)
            save(page, out / "dagster-sensor.png")
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
