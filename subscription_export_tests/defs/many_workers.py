"""A PostgreSQL-backed Dagster deployment exporting to S3 with N concurrent run workers: the
shared setup of the many-workers test and `bench/workers_bench.py`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from subscription_export.export.cut import cut_windows
from subscription_export.runtime import Project
from subscription_export.state.windows import Window
from subscription_export_tests.ui.dagster_processes import (
    REPO,
    DagsterProject,
    DagsterServices,
    wait_until,
)

DEPLOYED = REPO / "deploy" / "dagster.postgres.yaml"
JOB = "export_window"
_RUN_FIELDS = "runId status startTime endTime tags { key value }"


def instance_yaml(path: Path, max_concurrent_runs: int) -> Path:
    """The deployed instance with the queue at `max_concurrent_runs` and text logs."""
    config = yaml.safe_load(DEPLOYED.read_text())
    config["run_coordinator"]["config"]["max_concurrent_runs"] = max_concurrent_runs
    config.pop("python_logs", None)
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Deployment:
    project: DagsterProject
    services: DagsterServices
    windows: list[Window]

    def backfill(self) -> str:
        """One backfill of every window of the export job, as the UI launches it."""
        data = self.services.graphql(
            "mutation ($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p)"
            " { __typename ... on LaunchBackfillSuccess { backfillId }"
            " ... on PythonError { message } } }",
            {
                "p": {
                    "selector": {
                        "partitionSetName": f"{JOB}_partition_set",
                        "repositorySelector": {
                            "repositoryName": "__repository__",
                            "repositoryLocationName": "subscription_export",
                        },
                    },
                    "partitionNames": [w.key for w in self.windows],
                }
            },
        )["launchPartitionBackfill"]
        assert data["__typename"] == "LaunchBackfillSuccess", data
        return str(data["backfillId"])

    def runs(self, backfill_id: str) -> list[dict[str, Any]]:
        data = self.services.graphql(
            "query ($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) {"
            f" ... on Runs {{ results {{ {_RUN_FIELDS} }} }} }} }}",
            {"tags": [{"key": "dagster/backfill", "value": backfill_id}]},
        )
        return data["runsOrError"]["results"]  # type: ignore[no-any-return]

    def wait_for_runs(self, backfill_id: str, timeout_s: float) -> list[dict[str, Any]]:
        """Every window's run finished (the backfill daemon submits them over a few ticks)."""

        def finished() -> list[dict[str, Any]] | None:
            runs = self.runs(backfill_id)
            done = [r for r in runs if r["status"] in {"SUCCESS", "FAILURE", "CANCELED"}]
            return runs if len(done) >= len(self.windows) else None

        with self.services.explained(f"waiting for backfill {backfill_id}'s runs"):
            return wait_until("every window's run", finished, timeout_s, 2)


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
) -> Iterator[Deployment]:
    """`windows` windows of `window_size` changes cut and registered, the sensor stopped (the
    backfill is what exports), webserver and daemon up."""
    root.mkdir(parents=True, exist_ok=True)
    project = DagsterProject.create(
        root / "project",
        window_max_changes=window_size,
        dagster_yaml=instance_yaml(root / "dagster.yaml", max_concurrent_runs),
        extra_env={"DAGSTER_PG_URL": dagster_db, **env},
        export_dir=export_dir,
    )
    project.cli("init")
    project.write_changes(windows * window_size, subscriptions=max(20, windows * window_size // 8))
    cut = cut_windows(Project(project.settings)).new_windows
    assert len(cut) == windows, cut
    project.dagster("sensor", "stop", "change_log_sensor")
    project.dagster("instance", "migrate")
    with DagsterServices(project, root / "logs") as services:
        add_partitions(services, [w.key for w in cut])
        yield Deployment(project, services, cut)


def add_partitions(services: DagsterServices, keys: list[str]) -> None:
    for key in keys:
        data = services.graphql(
            "mutation ($s: RepositorySelector!, $p: String!, $k: String!) {"
            " addDynamicPartition(repositorySelector: $s, partitionsDefName: $p,"
            " partitionKey: $k) { __typename } }",
            {
                "s": {
                    "repositoryName": "__repository__",
                    "repositoryLocationName": "subscription_export",
                },
                "p": "cdc_windows",
                "k": key,
            },
        )
        assert data["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", data


def seconds_between(runs: list[dict[str, Any]]) -> float:
    return max(float(r["endTime"]) for r in runs) - min(float(r["startTime"]) for r in runs)


__all__ = ["Deployment", "deployment", "max_overlap", "seconds_between", "time"]
