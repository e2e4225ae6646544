"""The in-process CLI runner (cli_run.py) sees what a child process's caller would see and
leaves the test process as it found it."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from subscription_export_tests.cli_run import run_in_process


def test_output_below_python_and_the_exit_code_are_captured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def main() -> None:
        print("above")
        os.write(1, b"fd out\n")
        os.write(2, b"fd err\n")
        print(os.environ["EXTRA"], os.getcwd(), sys.argv[1:], file=sys.stderr)
        sys.exit(3)

    monkeypatch.setattr("subscription_export.cli.main", main)
    result = run_in_process(["status", "--json"], {"EXTRA": "given"}, tmp_path)
    assert result.returncode == 3
    assert result.stdout == "above\nfd out\n"
    assert result.stderr == f"given {tmp_path} ['status', '--json']\nfd err\n"
    assert "EXTRA" not in os.environ and os.getcwd() != str(tmp_path)


def test_an_escaping_exception_is_a_traceback_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def main() -> None:
        raise ValueError("escaped")

    monkeypatch.setattr("subscription_export.cli.main", main)
    result = run_in_process([], {}, tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ValueError: escaped" in result.stderr


def test_json_logs_and_the_environment_are_restored(tmp_path: Path) -> None:
    """`LOG_FORMAT=json` replaces the root logger's handlers; `inherit_env=False` empties the
    environment for the call only."""
    root = logging.getLogger()
    handlers, level, environ = root.handlers[:], root.level, dict(os.environ)
    env = {
        "SUBSCRIPTION_EXPORT_LOG_FORMAT": "json",
        "SUBSCRIPTION_EXPORT_SOURCE_URL": f"sqlite:///{tmp_path / 'missing.db'}",
    }
    result = run_in_process(["status"], env, tmp_path, inherit_env=False)
    assert result.returncode == 2 and "missing.db" in result.stderr, result.stderr
    assert root.handlers == handlers and root.level == level
    assert dict(os.environ) == environ
