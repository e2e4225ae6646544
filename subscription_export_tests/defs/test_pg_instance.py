"""The production Dagster instance (`deploy/dagster.postgres.yaml`) on a real PostgreSQL:
every documented URL form records runs, and the daemon's sensor runs export the changes, even
when the first launch fails."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
import yaml

from subscription_export_tests.defs.flaky_coordinator import MARKER_ENV
from subscription_export_tests.ui.dagster_processes import (
    REPO,
    DagsterProject,
    DagsterServices,
    run_tags,
    wait_until,
)

DEPLOYED = REPO / "deploy" / "dagster.postgres.yaml"
SENSOR = {"dagster/sensor_name": "change_log_sensor"}


@dg.asset
def one() -> int:
    return 1


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_the_deployed_instance_records_runs_for_every_url_form(
    dagster_db: str, scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stock `storage: postgres:` failed here with `postgresql://` (NOTIFY run_events, $1).
    (tmp_path / "dagster.yaml").write_text(DEPLOYED.read_text())
    monkeypatch.setenv("DAGSTER_PG_URL", scheme + dagster_db[dagster_db.index(":") :])
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        result = dg.materialize([one], instance=instance)
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        assert instance.get_latest_materialization_event(one.key) is not None


def _flaky_instance_yaml(path: Path) -> Path:
    """The deployed instance with a run coordinator whose first submit fails."""
    config = yaml.safe_load(DEPLOYED.read_text())
    config["run_coordinator"]["module"] = "subscription_export_tests.defs.flaky_coordinator"
    config["run_coordinator"]["class"] = "FailFirstSubmit"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_daemon_on_postgres_exports_sensor_windows_and_relaunches_a_failed_launch(
    dagster_db: str, s3_url: str, tmp_path: Path
) -> None:
    """The production shape: PostgreSQL instance, daemon-launched sensor runs, exports on S3."""
    marker = tmp_path / "first-submit-failed"
    project = DagsterProject.create(
        tmp_path / "project",
        window_max_changes=100,
        dagster_yaml=_flaky_instance_yaml(tmp_path / "dagster.yaml"),
        extra_env={
            "DAGSTER_PG_URL": dagster_db,
            MARKER_ENV: str(marker),
            "PYTHONPATH": str(REPO),  # the daemon loads the test coordinator
            **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
        },
        sensor_interval_s=3,
        export_dir=s3_url,
    )
    project.cli("init")
    project.write_changes(250, subscriptions=50)
    with DagsterServices(project, tmp_path / "logs") as services:

        def all_exported() -> list[dict[str, object]] | None:
            runs = services.runs(SENSOR)
            done = [r for r in runs if r["status"] == "SUCCESS"]
            return runs if len(done) == 3 else None

        with services.explained("waiting for the sensor's three window runs"):
            runs = wait_until("three successful sensor runs", all_exported, 180, 2)
            failed_daemon_log = services.logs["daemon"].read_text()

    assert marker.exists(), "the first submit never failed: the test proves nothing"
    relaunched = marker.read_text()
    assert relaunched in {r["runId"] for r in runs}, "the run that failed to launch was orphaned"
    assert "failed to launch" in failed_daemon_log
    windows = project.windows()
    assert [(w.lo, w.hi) for w in windows] == [(1, 100), (101, 200), (201, 250)]
    assert sorted(run_tags(r)["dagster/partition"] for r in runs) == sorted(
        w.key for w in windows
    )  # one run per window: the relaunch reused the orphaned run
    for window in windows:
        for path in project.files(window.key).values():
            assert path.exists(), path
