"""Killed and stopped runs (issue 12 item 8): a lease left by a run killed with SIGKILL is taken
over at once by the next `run`, and `run` stops promptly on SIGTERM, releasing what it holds.
Real subprocesses, a real SQLite source and state, the sandbox ERP over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings, replace
from subscription_export.export.cut import cut_windows
from subscription_export.runtime import Project
from subscription_export.sandbox.faults import FaultPlan, FaultSpec
from subscription_export.sandbox.server import SandboxServer, running_sandbox
from subscription_export.state.progress import completed_keys
from subscription_export.state.tables import leases
from subscription_export.state.windows import Window, list_windows
from subscription_export_tests.delivery.test_window_delivery import (
    assert_in_sync,
    write_destinations,
)
from subscription_export_tests.helpers import insert, update, writer
from subscription_export_tests.state.test_leases import hold_then_kill

CLI = [sys.executable, "-m", "subscription_export.cli", "run"]
FORMATS = ("parquet", "csv", "jsonl")

pytestmark = [
    pytest.mark.timeout(240),
    # Subprocess CLI runs are slow: SQLite only (the lease logic is the same on PostgreSQL,
    # tests/state/test_leases.py runs it on both).
    pytest.mark.parametrize("source_url", ["sqlite"], indirect=True),
]


@pytest.fixture
def erp() -> Iterator[SandboxServer]:
    with running_sandbox(("erp",)) as servers:
        yield servers["erp"]


def _three_windows(settings: Settings) -> tuple[Project, list[Window]]:
    project = Project(replace(settings, window_max_changes=20))
    with writer(settings.source_url).begin() as conn:
        for i in range(30):
            insert(conn, f"s{i}")
        for i in range(30):
            update(conn, f"s{i}", status="paused")
    return project, cut_windows(project).new_windows


def _env(
    project: Project,
    tmp_path: Path,
    erp: SandboxServer,
    retry: dict[str, float] | None = None,
) -> dict[str, str]:
    destinations = tmp_path / "destinations.toml"
    write_destinations(destinations, {"erp": erp}, read_s=30.0, retry=retry)
    return {
        **os.environ,
        **project.settings.as_env(),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "SUBSCRIPTION_EXPORT_DESTINATIONS": str(destinations),
        # A lease that is not taken over at once would be waited for longer than any run here
        # may take (the subprocess timeouts), so "at once" needs no clock in the assertions.
        "SUBSCRIPTION_EXPORT_LEASE_TTL_S": "900",
    }


def _run_once(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(
            [*CLI, "--once"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"run --once still waiting after {exc.timeout} s: {exc.stderr!r}")
    return done


def _assert_exact(project: Project, erp: SandboxServer) -> None:
    """Every window in every format and at the ERP, each once: no gap, no duplicate."""
    last = list_windows(project.state)[-1].hi
    keys = {w.key for w in list_windows(project.state)}
    for consumer in (*FORMATS, "erp"):
        assert project.watermarks.get(consumer) == last, consumer
        assert completed_keys(project.state, consumer) == keys, consumer
    assert_in_sync(project, {"erp": erp})
    with project.state.connect() as conn:
        assert conn.execute(sa.select(leases)).all() == []


def test_leases_of_killed_runs_are_taken_over_at_once(
    settings: Settings, erp: SandboxServer, tmp_path: Path
) -> None:
    """A run SIGKILLed while delivering window 1 to the ERP and one killed exporting window 2:
    the next run neither waits for their leases (15 minutes before) nor holds the CSV/JSONL of
    later windows behind the ERP's."""
    project, windows = _three_windows(settings)
    env = _env(project, tmp_path, erp)
    state_url = settings.state_url
    hold_then_kill(state_url, f"erp:{windows[0].key}")
    hold_then_kill(state_url, f"parquet:{windows[1].key}")

    done = _run_once(env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("took the lease over from run killed") == 2, done.stderr
    _assert_exact(project, erp)


def _wait_for_lease(project: Project, pid: int, proc: subprocess.Popen) -> str:
    """The name of a lease the run `pid` holds, once it holds one."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with project.state.connect() as conn:
            names = conn.execute(sa.select(leases.c.name, leases.c.holder)).all()
        held = [n for n, holder in names if f":{pid})" in holder or holder.endswith(f":{pid}")]
        if held:
            return held[0]
        time.sleep(0.05)
    pytest.fail("the run never took a lease")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_promptly_on_a_signal_and_releases_its_leases(
    settings: Settings, erp: SandboxServer, tmp_path: Path, signum: signal.Signals
) -> None:
    project, _windows = _three_windows(settings)
    env = _env(project, tmp_path, erp)
    erp.system.set_faults(FaultPlan(default=FaultSpec(latency_s=1.0)))  # a slow delivery
    proc = subprocess.Popen(
        [*CLI, "--watch", "--interval", "1"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        name = _wait_for_lease(project, proc.pid, proc)
        proc.send_signal(signum)
        try:  # before the fix the step was retried and the run went on past this
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{signum.name}: run --watch still running 30 s later (lease {name})")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signum, err
    # The run's own output is one line (Dagster's console log of the failed step may precede it
    # while the runner shows Dagster's WARNING lines); no Python traceback, no teardown noise.
    assert err.strip().splitlines()[-1].startswith(f"stopped by {signum.name}"), err
    assert "Exception ignored" not in err and "stopping.Stopped" not in err, err
    with project.state.connect() as conn:
        assert conn.execute(sa.select(leases)).all() == []

    erp.system.set_faults(FaultPlan())
    done = _run_once(env, tmp_path)
    assert done.returncode == 0, done.stderr
    _assert_exact(project, erp)


# A backoff no run could sit out within the test's bound: full jitter draws the first sleep from
# [0, 3600 s) (below 10 s once in 360 runs, and then the run stops between batches anyway).
LONG_BACKOFF = {"max_attempts": 8, "base_delay_s": 3600, "max_delay_s": 3600, "total_s": 86400}


def _wait_for_failures(erp: SandboxServer, proc: subprocess.Popen) -> None:
    """Until the ERP has refused a request: the run's lanes are now in their backoff sleep."""
    deadline = time.monotonic() + 60
    while not erp.system.faults_injected.get("error"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached the ERP"
        time.sleep(0.05)


def test_a_stop_cuts_the_retry_backoff_short(
    settings: Settings, erp: SandboxServer, tmp_path: Path
) -> None:
    """SIGTERM while every lane sleeps in a long backoff after 503s: the run exits 143 at once
    (Kubernetes kills a pod 30 s after SIGTERM), its leases released, nothing recorded; the next
    run delivers every window exactly once."""
    project, _windows = _three_windows(settings)
    env = _env(project, tmp_path, erp, retry=LONG_BACKOFF)
    erp.system.set_faults(FaultPlan(default=FaultSpec(error=1.0, error_statuses=(503,))))
    proc = subprocess.Popen(
        [*CLI, "--once"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_failures(erp, proc)
        proc.send_signal(signal.SIGTERM)
        try:  # before the fix the lanes slept out their backoff (up to an hour here)
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("run --once still sleeping in its retry backoff 30 s after SIGTERM")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("stopped by SIGTERM"), err
    with project.state.connect() as conn:
        assert conn.execute(sa.select(leases)).all() == []
    assert project.watermarks.get("erp") == 0  # nothing recorded as delivered

    erp.system.set_faults(FaultPlan())
    done = _run_once(env, tmp_path)
    assert done.returncode == 0, done.stderr
    _assert_exact(project, erp)
