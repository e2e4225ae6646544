"""`make bench` goes on past a benchmark that missed its target, never past one that crashed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Stands for the venv's `python` and `subscription-export`: every step succeeds, except the
# delivery benchmark, which exits with $DELIVERY_EXIT (3: missed target, 1: an exception).
FAKE = """#!/bin/sh
case "$*" in *delivery_bench.py*) echo "delivery $DELIVERY_EXIT"; exit "$DELIVERY_EXIT";; esac
echo "ran $*"
"""


def _make_bench(tmp_path: Path, delivery_exit: int) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name in ("python", "subscription-export"):
        (fake / name).write_text(FAKE)
        (fake / name).chmod(0o755)
    stamp = tmp_path / "installed"
    stamp.touch()  # newer than pyproject.toml: make installs nothing
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "bench", f"BIN={fake}", f"STAMP={stamp}"],
        env={**os.environ, "DELIVERY_EXIT": str(delivery_exit)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_missed_delivery_target_is_reported_and_a_crash_stops_make(tmp_path: Path) -> None:
    missed = _make_bench(tmp_path, 3)
    assert missed.returncode == 0, missed.stderr
    assert "delivery 3" in missed.stdout
    assert "bench/summary.py" in missed.stdout.splitlines()[-1]  # went on to the summary

    crashed = _make_bench(tmp_path, 1)
    assert crashed.returncode != 0
    assert "delivery 1" in crashed.stdout
    assert "summary.py" not in crashed.stdout
