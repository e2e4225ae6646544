"""The Dagster UI journeys of this project, driven in Debian's headless Chromium.

Shared by `test_dagster_ui.py` and `scripts/screenshots.py`: each helper opens one page of a
running webserver, waits for what a user would look at, and returns what it found. Selectors are
text and data attributes the UI renders for users (tooltips, labels), not CSS class names.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from playwright.sync_api import Browser, Page, expect

from subscription_export_tests.ui.dagster_processes import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
UI_TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1280, "height": 800}
WINDOW_ASSETS = ("subscription_changes", "subscription_changes_csv", "subscription_changes_jsonl")
CDC_GROUP = 'group:"cdc"'
SENSOR = "change_log_sensor"
EXPORT_JOB = "export_window"  # what the sensor runs, and what a backfill from the UI runs
CODE_LOCATION = "subscription_export"
# Without this the UI greets a first visit on localhost with a "Join the Dagster community" modal.
_SKIP_COMMUNITY_DIALOG = "window.localStorage.setItem('communityNux', JSON.stringify('1'))"
_KEY = re.compile(r"^\d{20}-\d{20}$")


def ensure_chromium() -> str | None:
    """/usr/bin/chromium, installed with scripts/ensure-chromium.sh if missing; else a reason."""
    if not CHROMIUM.exists():
        subprocess.run(["bash", str(REPO / "scripts" / "ensure-chromium.sh")], check=False)
    if CHROMIUM.exists():
        return None
    return f"{CHROMIUM} is missing and scripts/ensure-chromium.sh could not install it"


def require_services() -> bool:
    return os.environ.get("SUBSCRIPTION_EXPORT_REQUIRE_SERVICES") == "1"


def launch_browser(playwright: Any) -> Browser:
    # The UI is slow to settle on 2 busy cores: give `expect` the patience of a page action.
    expect.set_options(timeout=UI_TIMEOUT_MS)
    browser: Browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    return browser


def new_page(
    browser: Browser, timeout_ms: float = UI_TIMEOUT_MS, viewport: dict[str, int] | None = None
) -> Page:
    context = browser.new_context(viewport=viewport or VIEWPORT)  # type: ignore[arg-type]
    context.add_init_script(_SKIP_COMMUNITY_DIALOG)
    context.set_default_timeout(timeout_ms)
    return context.new_page()


def lineage_url(base: str, selection: str | None = None) -> str:
    """The lineage graph, optionally filtered like typing `selection` into its search box."""
    return f"{base}/asset-groups" + (f"~{quote(selection)}/" if selection else "")


def open_lineage(page: Page, base: str, selection: str | None, assets: Sequence[str]) -> None:
    page.goto(lineage_url(base, selection))
    for name in assets:
        expect(_graph_node(page, name)).to_be_visible()
    # Nodes show "Loading..." until their partition and check statuses arrive.
    expect(page.locator("svg foreignObject").get_by_text(re.compile(r"^Loading"))).to_have_count(0)


def open_downstream_lineage(page: Page, base: str, asset: str, groups: Sequence[str]) -> None:
    """The asset's Lineage tab, everything downstream: the whole graph, grouped."""
    page.goto(f"{base}/assets/{asset}?view=lineage&lineageScope=downstream")
    for group in groups:
        expect(_graph_node(page, group)).to_be_visible()
    expect(page.locator("svg foreignObject").get_by_text(re.compile(r"^Loading"))).to_have_count(0)
    page.mouse.move(5, VIEWPORT["height"] - 5)


def _graph_node(page: Page, asset: str) -> Any:
    return page.locator(f'svg foreignObject [data-tooltip="{asset}"]')


# Screen rectangles of the graph's asset nodes and both ends of every edge (SVG paths with an
# arrow marker), in one coordinate system (CSS pixels of the viewport).
_GRAPH_GEOMETRY_JS = """
(names) => {
  const nodes = {};
  for (const name of names) {
    const node = Array.from(document.querySelectorAll('svg foreignObject')).find(
      (el) => el.querySelector(`[data-tooltip="${CSS.escape(name)}"]`));
    if (node) {
      const r = node.getBoundingClientRect();
      nodes[name] = {left: r.left, right: r.right, top: r.top, bottom: r.bottom};
    }
  }
  const edges = [];
  for (const path of document.querySelectorAll('svg path[marker-end]')) {
    const length = path.getTotalLength();
    const toScreen = path.getScreenCTM();
    if (!length || !toScreen) continue;
    const a = path.getPointAtLength(0).matrixTransform(toScreen);
    const z = path.getPointAtLength(length).matrixTransform(toScreen);
    edges.push({from: [a.x, a.y], to: [z.x, z.y]});
  }
  return {nodes, edges};
}
"""


def lineage_edges(page: Page, assets: Sequence[str]) -> set[tuple[str, str]]:
    """(upstream, downstream) for every drawn edge that starts at the right side of one of
    `assets` and ends (arrowhead) at the left side of another."""
    geometry = page.evaluate(_GRAPH_GEOMETRY_JS, list(assets))
    nodes: dict[str, dict[str, float]] = geometry["nodes"]

    def node_at(x: float, y: float, side: str) -> str | None:
        near = [
            (abs(y - (r["top"] + r["bottom"]) / 2), name)
            for name, r in nodes.items()
            if abs(x - r[side]) <= 12 and r["top"] <= y <= r["bottom"]
        ]
        return min(near)[1] if near else None

    pairs = set()
    for edge in geometry["edges"]:
        upstream, downstream = node_at(*edge["from"], "right"), node_at(*edge["to"], "left")
        if upstream and downstream:
            pairs.add((upstream, downstream))
    return pairs


def wait_for_edges(
    page: Page, assets: Sequence[str], expected: set[tuple[str, str]], timeout_s: float = 30
) -> set[tuple[str, str]]:
    """Edges are laid out by a web worker after the nodes appear; poll until they are drawn."""
    drawn: set[tuple[str, str]] = set()
    for _ in range(int(timeout_s * 2)):
        drawn = lineage_edges(page, assets)
        if expected <= drawn:
            break
        page.wait_for_timeout(500)
    return drawn


def open_partitions(page: Page, base: str, asset: str, keys: Sequence[str]) -> list[str]:
    """The asset's partitions page; returns the partition keys its list shows, in order."""
    page.goto(f"{base}/assets/{asset}?view=partitions")
    for key in keys:
        expect(page.locator(f'[data-tooltip="{key}"]')).to_be_visible()
    expect(page.get_by_text(f"Materialized ({len(keys)})")).to_be_visible()
    shown: list[str] = page.eval_on_selector_all(
        "[data-tooltip]", "els => els.map((el) => el.getAttribute('data-tooltip'))"
    )
    return [key for key in shown if _KEY.match(key)]


def open_partition(page: Page, key: str) -> dict[str, str]:
    """Click one window in the partitions list; returns the detail's metadata table."""
    page.locator(f'[data-tooltip="{key}"]').click()
    expect(page.get_by_text(key, exact=True).last).to_be_visible()
    expect(page.get_by_text("lsn_from", exact=True)).to_be_visible()
    page.mouse.move(VIEWPORT["width"] - 10, VIEWPORT["height"] - 10)  # drop the hover tooltip
    rows: list[list[str]] = page.eval_on_selector_all(
        "tr", "rows => rows.map((r) => Array.from(r.cells).map((c) => c.innerText.trim()))"
    )
    return {row[0]: row[1] for row in rows if len(row) >= 2}


def job_partitions_url(base: str, job: str = EXPORT_JOB) -> str:
    return f"{base}/locations/{CODE_LOCATION}/jobs/{job}/partitions"


def launch_backfill(
    page: Page, base: str, keys: Sequence[str], dialog_png: Path | None = None
) -> str:
    """The export job's Partitions tab → Materialize… → tick the windows → Launch backfill;
    returns the backfill's id. Its runs are runs of that job (the same as the sensor's).
    `dialog_png` saves the filled-in dialog just before the click on Launch backfill."""
    page.goto(job_partitions_url(base))
    expect(page.get_by_text("Total partitions", exact=True)).to_be_visible()
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(re.compile(r"^Launch runs to materialize"))).to_be_visible()
    dialog.get_by_text("Select a partition or create one").click()
    for key in keys:
        page.locator("label", has_text=key).click()
    dialog.get_by_text(re.compile(r"^Launch runs to materialize")).click()  # close the list
    expect(dialog.get_by_text(f"{len(keys)} partitions", exact=True)).to_be_visible()
    if dialog_png:
        screenshot(page, dialog_png)
    dialog.get_by_role("button", name="Launch backfill").click()
    toast = page.get_by_text(re.compile(r"Created backfill \w+"))
    expect(toast).to_be_visible()
    match = re.search(r"Created backfill (\w+)", toast.inner_text())
    assert match, toast.inner_text()
    return match.group(1)


def open_backfill(page: Page, base: str, backfill_id: str, partitions: int) -> None:
    """The backfill's page once it is done: succeeded, every targeted window succeeded."""
    page.goto(f"{base}/runs/b/{backfill_id}")
    status = page.get_by_text("Status", exact=True).locator("xpath=..")
    expect(status).to_contain_text("Succeeded")
    expect(page.get_by_text(f"{partitions} partitions", exact=True)).to_be_visible()
    row = page.get_by_role("row").filter(has_text=EXPORT_JOB).filter(has_text="100% completed")
    expect(row).to_be_visible()
    # Job, then partitions targeted, in progress, succeeded, failed.
    counts = [text.strip() for text in row.get_by_role("cell").all_inner_texts()[1:]]
    n = str(partitions)
    assert counts == [n, "0", n, "0"], counts


def open_sensor(page: Page, base: str, run_id: str, cursor: int) -> None:
    """The sensor's page: its cursor and the tick that requested `run_id`."""
    page.goto(f"{base}/locations/{CODE_LOCATION}/sensors/{SENSOR}")
    tick = page.get_by_role("row").filter(has=page.get_by_text(run_id[:8], exact=True))
    expect(tick.get_by_text("1 run requested").first).to_be_visible()
    expect(tick.get_by_text("(1 partition created)")).to_be_visible()
    expect(
        page.get_by_role("row").filter(has_text="Cursor").get_by_text(str(cursor))
    ).to_be_visible()


def screenshot(page: Page, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path
