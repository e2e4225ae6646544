"""`run --once` must not exit 0 while a destination stays behind because of dead letters: a
cycle with no new window meets no blocked delivery step, so it reported success cycle after
cycle while the ERP lacked the records. Real sandbox ERP over HTTP, real source and state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from subscription_export.core.settings import Settings
from subscription_export.delivery.dead_letters import ENV_POLICY, list_dead_letters
from subscription_export.sandbox.faults import FaultPlan
from subscription_export.sandbox.server import SandboxServer
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.delivery.test_window_delivery import (
    LOST_ANSWERS,
    _two_windows,
    sandbox,  # noqa: F401 - the fixture
    write_destinations,
)


@pytest.mark.parametrize("policy", ["block", "skip"])
def test_a_cycle_without_a_new_window_exits_3_while_dead_letters_hold_a_destination_back(
    settings: Settings,
    sandbox: dict[str, SandboxServer],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
) -> None:
    """The ERP's answers are lost (one attempt: dead letters) during the cycle that delivers
    both windows. Under `block` window 2 waits behind window 1; under `skip` window 2's
    changes of the same records are held back behind theirs. Later cycles bring no new
    window, so no delivery step meets the block, while the ERP still lacks those records."""
    project, _first, _second = _two_windows(settings)
    erp = sandbox["erp"]
    path = tmp_path / "destinations.toml"
    write_destinations(path, {"erp": erp}, retry={"max_attempts": 1})
    env = {"SUBSCRIPTION_EXPORT_DESTINATIONS": str(path), ENV_POLICY: policy}
    erp.system.set_faults(LOST_ANSWERS)
    run_cli(["run", "--once"], project.settings, tmp_path, check=False, env=env)
    erp.system.set_faults(FaultPlan())
    letters = list_dead_letters(project.state, "erp", status="open")
    records = len({d.subscription_id for d in letters})
    assert letters and records == 10

    for _cycle in range(2):  # every cycle, not only the one that met the block
        result = run_cli(["run", "--once"], project.settings, tmp_path, check=False, env=env)
        assert result.returncode == 3, result.stdout + result.stderr
        (line,) = [x for x in result.stderr.splitlines() if "dead letter" in x]
        assert line.startswith("erp: ") and f"{len(letters)} open dead letter(s)" in line, line
        assert f"{records} record(s)" in line, line
        assert "dead-letters replay --destination erp" in line, line


@pytest.mark.timeout(240)
@pytest.mark.parametrize("source_url", ["sqlite"], indirect=True)  # a subprocess: slow
def test_run_watch_says_it_every_cycle_and_keeps_running(
    settings: Settings,
    sandbox: dict[str, SandboxServer],  # noqa: F811
    tmp_path: Path,
) -> None:
    project, _first, _second = _two_windows(settings)
    erp = sandbox["erp"]
    path = tmp_path / "destinations.toml"
    write_destinations(path, {"erp": erp}, retry={"max_attempts": 1})
    env = {"SUBSCRIPTION_EXPORT_DESTINATIONS": str(path)}
    erp.system.set_faults(LOST_ANSWERS)
    run_cli(["run", "--once"], project.settings, tmp_path, check=False, env=env)
    erp.system.set_faults(FaultPlan())

    child_env = {
        **os.environ,
        **project.settings.as_env(),
        **env,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "COLUMNS": "400",
    }
    cli = [sys.executable, "-m", "subscription_export.cli", "run", "--watch", "--quiet"]
    with subprocess.Popen(
        [*cli, "--interval", "0.2"],
        env=child_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as watching:
        assert watching.stderr is not None
        said = 0
        while said < 2:  # two cycles in a row said it (the pytest timeout bounds the wait)
            line = watching.stderr.readline()
            assert line, f"run --watch ended (exit {watching.wait()})"
            said += line.startswith("erp: 10 open dead letter(s), 10 record(s) waiting")
        assert watching.poll() is None  # still running: --watch does not exit on it
        watching.send_signal(signal.SIGTERM)
        watching.communicate(timeout=60)
