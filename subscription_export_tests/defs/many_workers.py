"""A PostgreSQL-backed Dagster deployment exporting to S3 with N concurrent run workers: the
shared setup and checks of the many-workers test and `bench/workers_bench.py`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.formats.verify import verify_exports
from subscription_export.runtime import Project, init_state_tables
from subscription_export.source.schema import init_source
from subscription_export.source.sequencer import last_lsn
from subscription_export.state.tables import leases
from subscription_export.state.windows import Window, list_windows
from subscription_export_tests.ui.dagster_processes import (
    REPO,
    DagsterProject,
    DagsterServices,
    run_tags,
    wait_until,
)

DEPLOYED = REPO / "deploy" / "dagster.postgres.yaml"
JOB = "export_window"
FORMATS = ("parquet", "csv", "jsonl")
_RUN_FIELDS = "runId status startTime endTime tags { key value }"
_REPOSITORY = {"repositoryName": "__repository__", "repositoryLocationName": "subscription_export"}


def instance_yaml(path: Path, max_concurrent_runs: int, dequeue_interval_s: int | None) -> Path:
    """The deployed instance with the queue at `max_concurrent_runs` and text logs; the queue
    looks for free slots every `dequeue_interval_s` (Dagster's default, 5 s, when None)."""
    config = yaml.safe_load(DEPLOYED.read_text())
    config["run_coordinator"]["config"]["max_concurrent_runs"] = max_concurrent_runs
    if dequeue_interval_s is not None:
        config["run_coordinator"]["config"]["dequeue_interval_seconds"] = dequeue_interval_s
    config.pop("python_logs", None)
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Deployment:
    project: DagsterProject
    services: DagsterServices
    windows: list[Window]

    def backfill(self) -> str:
        """One backfill of every window of the export job, as the UI launches it; then the
        daemon starts, so its first backfill tick submits every run (the next one is 30 s on)."""
        data = self.services.graphql(
            "mutation ($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p)"
            " { __typename ... on LaunchBackfillSuccess { backfillId }"
            " ... on PythonError { message } } }",
            {
                "p": {
                    "selector": {
                        "partitionSetName": f"{JOB}_partition_set",
                        "repositorySelector": _REPOSITORY,
                    },
                    "partitionNames": [w.key for w in self.windows],
                }
            },
        )["launchPartitionBackfill"]
        assert data["__typename"] == "LaunchBackfillSuccess", data
        if "daemon" not in self.services.processes:
            self.services.start_daemon()
        return str(data["backfillId"])

    def runs(self, backfill_id: str) -> list[dict[str, Any]]:
        data = self.services.graphql(
            "query ($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) {"
            f" ... on Runs {{ results {{ {_RUN_FIELDS} }} }} }} }}",
            {"tags": [{"key": "dagster/backfill", "value": backfill_id}]},
        )
        return data["runsOrError"]["results"]  # type: ignore[no-any-return]

    def wait_for_runs(self, backfill_id: str, timeout_s: float) -> list[dict[str, Any]]:
        """Every window's run finished (the backfill daemon submits them in chunks of 25)."""

        def finished() -> list[dict[str, Any]] | None:
            self.services.check_alive()
            runs = self.runs(backfill_id)
            done = [r for r in runs if r["status"] in {"SUCCESS", "FAILURE", "CANCELED"}]
            return runs if len(done) >= len(self.windows) else None

        with self.services.explained(f"waiting for backfill {backfill_id}'s runs"):
            return wait_until("every window's run", finished, timeout_s, 1)


def max_overlap(runs: list[dict[str, Any]]) -> int:
    """The most runs that were executing at the same moment."""
    edges = sorted(
        [(float(r["startTime"]), 1) for r in runs] + [(float(r["endTime"]), -1) for r in runs]
    )
    running = peak = 0
    for _moment, step in edges:
        running += step
        peak = max(peak, running)
    return peak


@contextmanager
def deployment(
    root: Path,
    dagster_db: str,
    export_dir: str,
    env: dict[str, str],
    windows: int,
    window_size: int,
    max_concurrent_runs: int,
    dequeue_interval_s: int | None = None,
) -> Iterator[Deployment]:
    """`windows` windows of `window_size` changes cut and registered, the sensor stopped (the
    backfill is what exports), the webserver up; the daemon starts with the backfill."""
    root.mkdir(parents=True, exist_ok=True)
    project = DagsterProject.create(
        root / "project",
        window_max_changes=window_size,
        dagster_yaml=instance_yaml(root / "dagster.yaml", max_concurrent_runs, dequeue_interval_s),
        extra_env={"DAGSTER_PG_URL": dagster_db, **env},
        export_dir=export_dir,
    )
    settings = project.settings
    init_source(engine_for(settings.source_url, writer=True), settings.table)  # as `init` does
    init_state_tables(engine_for(settings.state_url, writer=True))
    project.write_changes(windows * window_size, subscriptions=max(20, windows * window_size // 8))
    cut = cut_windows(Project(settings)).new_windows
    assert len(cut) == windows, cut
    # The webserver alone creates the instance's tables; the daemon starts with the backfill.
    with DagsterServices(project, root / "logs", daemon=False) as services:
        stop_sensor(services, "change_log_sensor")
        add_partitions(services, [w.key for w in cut])
        yield Deployment(project, services, cut)


def stop_sensor(services: DagsterServices, name: str) -> None:
    """As the UI's toggle does, before any daemon could tick it."""
    sensor = services.graphql(
        "query ($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {"
        " __typename ... on Sensor { id } } }",
        {"s": {**_REPOSITORY, "sensorName": name}},
    )["sensorOrError"]
    assert sensor["__typename"] == "Sensor", sensor
    stopped = services.graphql(
        "mutation ($id: String!) { stopSensor(id: $id) { __typename"
        " ... on StopSensorMutationResult { instigationState { status } } } }",
        {"id": sensor["id"]},
    )["stopSensor"]
    assert stopped["instigationState"]["status"] == "STOPPED", stopped


def add_partitions(services: DagsterServices, keys: list[str]) -> None:
    for key in keys:
        data = services.graphql(
            "mutation ($s: RepositorySelector!, $p: String!, $k: String!) {"
            " addDynamicPartition(repositorySelector: $s, partitionsDefName: $p,"
            " partitionKey: $k) { __typename } }",
            {"s": _REPOSITORY, "p": "cdc_windows", "k": key},
        )
        assert data["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", data


def seconds_between(runs: list[dict[str, Any]]) -> float:
    return max(float(r["endTime"]) for r in runs) - min(float(r["startTime"]) for r in runs)


def contiguous(windows: Sequence[Window], end: int) -> bool:
    """The windows cover LSNs 1..end, each starting right after the one before."""
    starts = [w.lo for w in windows]
    return (
        bool(windows)
        and starts == [1, *(w.hi + 1 for w in windows[:-1])]
        and (windows[-1].hi == end)
    )


def assert_no_leases(settings: Settings) -> None:
    with engine_for(settings.state_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(leases)).scalar_one() == 0


def assert_each_window_once(
    settings: Settings, windows: Sequence[Window], runs: list[dict[str, Any]]
) -> None:
    """Every window exported by exactly one successful run, windows and watermarks contiguous to
    the log's end, every object matching its manifest, no lease left behind."""
    assert [r["status"] for r in runs] == ["SUCCESS"] * len(windows), runs
    per_window = Counter(run_tags(r)["dagster/partition"] for r in runs)
    assert per_window == Counter(w.key for w in windows)  # one run per window, none twice
    project = Project(settings)
    end = last_lsn(project.source)
    cut = list_windows(project.state)
    assert [w.key for w in cut] == [w.key for w in windows]
    assert contiguous(cut, end), [(w.lo, w.hi) for w in cut]
    assert project.watermarks.all() == dict.fromkeys(FORMATS, end)
    files = 3 * len(windows)
    assert verify_exports(settings.export_dir).summary == (
        f"{files}/{files} file(s) match their manifests"
    )
    assert_no_leases(settings)
