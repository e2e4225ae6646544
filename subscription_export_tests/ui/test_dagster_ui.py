"""The Dagster UI journeys in a real headless Chromium, on a real webserver and daemon.

One throwaway deployment per module: 5 windows of 100 changes exported by `subscription-export
run --once`, then `dagster-webserver` and `dagster-daemon` on `workspace.yaml`. The journeys
run in file order on it: lineage, partitions, a backfill launched by clicks, a sensor run. The
daemons work in 30 s ticks (backfills, sensor), so the app writes its new changes while the
backfill runs, as it would in real life: the sensor's wait overlaps the backfill's.
Screenshots land in `artifacts/ui/` (git-ignored); a failure adds the page as
`artifacts/ui/failed-<test>.png` and the Dagster logs' tails to the error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from subscription_export.state.windows import Window
from subscription_export_tests.ui import (
    CDC_GROUP,
    SENSOR,
    WINDOW_ASSETS,
    ensure_chromium,
    launch_backfill,
    launch_browser,
    new_page,
    open_backfill,
    open_lineage,
    open_partition,
    open_partitions,
    open_sensor,
    require_services,
    screenshot,
    wait_for_edges,
)
from subscription_export_tests.ui.dagster_processes import (
    REPO,
    DagsterProject,
    DagsterServices,
    run_tags,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.xdist_group("dagster_ui"),  # one deployment, journeys in order, one worker
    # Usually ~90 s in all; the backfill daemon and the sensor tick every 30 s.
    pytest.mark.timeout(300),
]

WINDOW_SIZE = 100
SEED_WINDOWS = 5
NEW_CHANGES = 60  # fewer than a window: with max age 0 they become one window at the next tick
ARTIFACTS = REPO / "artifacts" / "ui"


@dataclass
class Deployment:
    project: DagsterProject
    services: DagsterServices
    windows: list[Window]  # what `run --once` cut and exported before the UI started
    new_window: Window | None = None  # the changes the app wrote once the UI was up

    @property
    def url(self) -> str:
        return self.services.url

    def write_new_changes(self) -> Window:
        """The app writes NEW_CHANGES more changes (once); the window the sensor will cut."""
        if self.new_window is None:
            assert self.services.runs({"dagster/sensor_name": SENSOR}) == []  # nothing to do yet
            self.project.write_changes(NEW_CHANGES, seed=11)
            last = self.windows[-1]
            self.new_window = Window(last.hi + 1, last.hi + NEW_CHANGES)
        return self.new_window


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problem = ensure_chromium()
    if problem:
        if require_services():
            pytest.fail(problem + " and SUBSCRIPTION_EXPORT_REQUIRE_SERVICES=1")
        pytest.skip(problem)
    with sync_playwright() as playwright:
        chromium = launch_browser(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def deployment(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("dagster_ui")
    project = DagsterProject.create(root / "project", window_max_changes=WINDOW_SIZE)
    project.cli("init")
    project.write_changes(SEED_WINDOWS * WINDOW_SIZE, subscriptions=50)
    project.cli("run", "--once", "--quiet")
    windows = project.windows()
    assert [w.changes for w in windows] == [WINDOW_SIZE] * SEED_WINDOWS
    with DagsterServices(project, root / "logs") as services:
        yield Deployment(project, services, windows)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = new_page(browser)
    yield page
    page.context.close()


@contextmanager
def journey(deployment: Deployment, page: Page, name: str) -> Iterator[None]:
    """On failure: save what the page showed and attach the webserver/daemon log tails."""
    try:
        with deployment.services.explained(name):
            yield
    except BaseException:
        screenshot(page, ARTIFACTS / f"failed-{name}.png")
        raise


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_asset_graph_shows_window_lineage(deployment: Deployment, page: Page) -> None:
    expected = {
        ("subscription_changes", "subscription_changes_csv"),
        ("subscription_changes", "subscription_changes_jsonl"),
    }
    with journey(deployment, page, "lineage"):
        open_lineage(page, deployment.url, CDC_GROUP, WINDOW_ASSETS)
        drawn = wait_for_edges(page, WINDOW_ASSETS, expected)
        screenshot(page, ARTIFACTS / "asset-graph.png")
    # Exactly the two fan-out edges: no edge between the derived formats, none pointing back.
    assert drawn == expected


def test_partitions_page_lists_the_windows(deployment: Deployment, page: Page) -> None:
    keys = [w.key for w in deployment.windows]
    with journey(deployment, page, "partitions"):
        shown = open_partitions(page, deployment.url, "subscription_changes", keys)
        picked = deployment.windows[2]
        metadata = open_partition(page, picked.key)
        screenshot(page, ARTIFACTS / "partitions.png")
    assert shown == keys
    assert (metadata["lsn_from"], metadata["lsn_to"]) == (str(picked.lo), str(picked.hi))
    assert metadata["rows"] == str(picked.changes)


def test_backfill_of_three_windows_launched_from_the_ui(deployment: Deployment, page: Page) -> None:
    """Lose three windows' files, then restore them with a backfill launched by clicks."""
    windows = deployment.windows[1:4]
    keys = [w.key for w in windows]
    files = {key: deployment.project.files(key) for key in keys}
    before = {(key, fmt): sha256(path) for key in keys for fmt, path in files[key].items()}
    for paths in files.values():
        for path in paths.values():
            path.unlink()

    with journey(deployment, page, "backfill"):
        backfill_id = launch_backfill(page, deployment.url, keys)
        deployment.write_new_changes()  # meanwhile the app goes on (see the sensor journey)
        backfill = deployment.services.wait_for_backfill(backfill_id, timeout_s=180)
        assert backfill["status"] == "COMPLETED_SUCCESS", backfill
        open_backfill(page, deployment.url, backfill_id, partitions=len(keys))
        screenshot(page, ARTIFACTS / "backfill.png")

    runs = [(run_tags(r), r["status"]) for r in backfill["runs"]]
    assert sorted(tags["dagster/partition"] for tags, _ in runs) == keys
    assert {(tags.get("dagster/from_ui"), status) for tags, status in runs} == {("true", "SUCCESS")}
    after = {(key, fmt): sha256(path) for key in keys for fmt, path in files[key].items()}
    assert after == before  # all three formats back, byte-identical (windows are immutable)


def test_new_changes_produce_a_sensor_run_without_cli(deployment: Deployment, page: Page) -> None:
    window = deployment.write_new_changes()  # already done if the backfill journey ran first
    sensor_tags = {"dagster/sensor_name": SENSOR}

    with journey(deployment, page, "sensor"):
        # The sensor ticks every 30 s; the run then starts in its own process.
        run = deployment.services.wait_for_run(
            {**sensor_tags, "dagster/partition": window.key}, timeout_s=150
        )
        assert run["status"] == "SUCCESS", run
        open_sensor(page, deployment.url, run["runId"], cursor=window.hi)
        screenshot(page, ARTIFACTS / "sensor.png")

    assert run_tags(run)["dagster/run_key"] == window.key
    assert deployment.project.windows()[-1] == window
    files = deployment.project.files(window.key)
    assert pq.ParquetFile(files["parquet"]).metadata.num_rows == NEW_CHANGES
    assert len(files["csv"].read_text(encoding="utf-8").splitlines()) == NEW_CHANGES + 1  # header
    assert len(files["jsonl"].read_text(encoding="utf-8").splitlines()) == NEW_CHANGES
