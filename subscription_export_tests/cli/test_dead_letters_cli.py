"""`dead-letters list` and `replay` for scripts: JSON out, exit status, nothing sent twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from subscription_export.core.settings import Settings
from subscription_export.delivery.window import deliver_window
from subscription_export.sandbox.faults import FaultPlan
from subscription_export.sandbox.server import SandboxServer
from subscription_export_tests.cli_run import run_cli as _run
from subscription_export_tests.delivery.test_window_delivery import (
    HOLDER,
    LOST_ANSWERS,
    _two_windows,
    assert_in_sync,
    sandbox,  # noqa: F401 - the fixture
    write_destinations,
)


def test_replay_reports_json_and_catches_up_the_windows_behind(
    settings: Settings,
    sandbox: dict[str, SandboxServer],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project, first, second = _two_windows(settings)
    erp = sandbox["erp"]
    path = tmp_path / "destinations.toml"
    config = write_destinations(path, {"erp": erp}, retry={"max_attempts": 1})
    erp.system.set_faults(LOST_ANSWERS)
    assert deliver_window(project, config.destinations["erp"], first, HOLDER).status == "blocked"
    erp.system.set_faults(FaultPlan())
    monkeypatch.setenv("SUBSCRIPTION_EXPORT_DESTINATIONS", str(path))  # inherited by the CLI

    listed = json.loads(_run(["dead-letters", "list", "--json"], project.settings, tmp_path).stdout)
    assert [d["lsn"] for d in listed] == list(range(first.lo, first.hi + 1))

    replay = ["dead-letters", "replay", "--destination", "erp", "--json"]
    report = json.loads(_run(replay, project.settings, tmp_path).stdout)
    assert report["replayed"] == 10 and report["still_open"] == []
    assert report["completed_windows"] == [{"destination": "erp", "window": first.key}]
    assert [c["window"] for c in report["caught_up"]] == [second.key]
    assert report["watermarks"] == {"erp": second.hi}
    assert_in_sync(project, {"erp": erp})  # each key applied once

    again = json.loads(_run(replay, project.settings, tmp_path).stdout)
    assert again == {"replayed": 0, "still_open": [], "caught_up": []}
