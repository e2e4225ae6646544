"""`bench/capture_bench.py`'s arithmetic: every mode once a round in a rotating order, and
ratios taken within a round (drift between rounds must not reach the headline)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "capture_bench.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capture_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_each_round_runs_every_mode_once_starting_elsewhere() -> None:
    bench = _bench()
    orders = [bench.round_order(n) for n in range(len(bench.MODES) * 2)]
    assert all(sorted(o) == sorted(bench.MODES) for o in orders)
    assert len({o[0] for o in orders}) == len(bench.MODES)  # every mode goes first once
    assert len({o[-1] for o in orders}) == len(bench.MODES)  # and last once


def test_ratios_are_taken_within_a_round() -> None:
    bench = _bench()

    def round_(off: float, share: float) -> dict[str, dict[str, Any]]:
        # the server's CPU per transaction: 1 ms for `off`, 1 / share ms for every other mode
        return {
            m: {
                "tx_per_s": off if m == "off" else off * share,
                "server_cpu_ms_per_tx": 1.0 if m == "off" else 1.0 / share,
            }
            for m in bench.MODES
        }

    # Capture costs 0.5x, 0.6x, 0.7x of off in three rounds while the machine's speed swings.
    # The median of ratios is 0.6; the ratio of medians (1,400 / 2,000) would say 0.7.
    rounds = [round_(4000.0, 0.5), round_(1000.0, 0.6), round_(2000.0, 0.7)]
    summary = bench.summarize(rounds, [])
    assert summary["ratio_to_off"]["capture_seq"] == 0.6
    assert summary["ratio_to_off_range"]["capture_seq"] == [0.5, 0.7]
    assert summary["capture_seq_ratio_per_round"] == [0.5, 0.6, 0.7]
    assert summary["median_tx_per_s"]["off"] == 2000.0
    assert summary["cpu_ratio_to_off"]["capture_seq"] == 0.6
    assert summary["cpu_ratio_to_off_range"]["capture_seq"] == [0.5, 0.7]


def test_cpu_seconds_of_a_process_come_from_proc() -> None:
    bench = _bench()
    spent = bench.cpu_s(os.getpid())
    assert spent is not None and spent > 0  # importing the bench took CPU
    assert bench.cpu_s(2**22 + 1) is None  # above pid_max: no such process
