"""Incremental cycle: seconds of one in-process `run_cycle` over 10k new changes after a history.

    .venv/bin/python bench/cycle_bench.py [--history 1000000] [--cycles 7] [--changes 10000]
        [--source postgresql|sqlite] [--pg-dsn URL] [--profile] [--out DIR]

The history (`--history` change-log rows, exported once by a first cycle) is built ONCE; then
each of `--cycles` cycles generates `--changes` new changes through the triggers and times one
`run_cycle` on one ephemeral Dagster instance (as `subscription-export bench` does for its
`incremental_10k_s`, which times a single cycle). Reports the median, every cycle's seconds and
how many SQLite state connections each cycle opened. `--profile` also writes a cProfile
(cumulative, top 60) of the median-sized cycle to `<out>/<date>-profile-cycle.txt`.
Writes `<out>/<date>-cycle-<source>-<history>.json`.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from subscription_export.bench import fill_change_log, prepare_source  # noqa: E402
from subscription_export.core.db import engine_for  # noqa: E402
from subscription_export.core.settings import Settings  # noqa: E402
from subscription_export.source.demo_table import init_demo_source  # noqa: E402


def _count_connects(engine: sa.Engine, counter: list[int]) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(_dbapi, _record):  # type: ignore[no-untyped-def]
        counter[0] += 1


def measure(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    import dagster as dg

    from subscription_export.defs.runner import run_cycle
    from subscription_export.sandbox.generator import generate

    target = prepare_source(args.source, run_dir, args.pg_dsn)
    try:
        engine = engine_for(target.source_url, writer=True)
        init_demo_source(engine)
        started = time.perf_counter()
        fill_change_log(engine, args.history)
        fill_s = time.perf_counter() - started
        settings = Settings(
            source_url=target.source_url,
            state_url=f"sqlite:///{run_dir / 'state.db'}",
            export_dir=run_dir / "exports",
            window_max_changes=max(args.history, args.changes),
            window_max_age_s=0.0,
        )
        instance = dg.DagsterInstance.ephemeral()
        started = time.perf_counter()
        first = run_cycle(settings, instance=instance)  # the history's window; warms imports
        history_s = time.perf_counter() - started
        assert all(r.success for r in first.runs), first.runs
        state_connects = [0]
        _count_connects(engine_for(settings.state_url, writer=True), state_connects)
        seconds: list[float] = []
        connects: list[int] = []
        profiles: list[cProfile.Profile] = []
        for i in range(args.cycles):
            generate(engine, subscriptions=100, changes=args.changes, seed=10 + i)
            state_connects[0] = 0
            profile = cProfile.Profile() if args.profile else None
            started = time.perf_counter()
            if profile:
                profile.enable()
            cycle = run_cycle(settings, instance=instance)
            if profile:
                profile.disable()
                profiles.append(profile)
            seconds.append(time.perf_counter() - started)
            connects.append(state_connects[0])
            assert cycle.runs and all(r.success for r in cycle.runs), cycle.runs
        report: dict[str, Any] = {
            "date": dt.date.today().isoformat(),
            "source": args.source,
            "history": args.history,
            "changes_per_cycle": args.changes,
            "fill_s": round(fill_s, 2),
            "history_cycle_s": round(history_s, 2),
            "cycle_s": [round(s, 4) for s in seconds],
            "median_cycle_s": round(statistics.median(seconds), 4),
            "state_connections_per_cycle": connects,
            "profiled": bool(args.profile),
            "load_avg": os.getloadavg(),
        }
        if profiles:
            ranked = sorted(range(len(seconds)), key=seconds.__getitem__)
            median_profile = profiles[ranked[len(ranked) // 2]]
            median_profile.dump_stats(str(Path(tempfile.gettempdir()) / "cycle_bench.prof"))
            report["profile_text"] = _profile_text(median_profile)
        return report
    finally:
        engine_for.cache_clear()
        target.cleanup()


def _profile_text(profile: cProfile.Profile) -> str:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(60)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=7)
    parser.add_argument("--source", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get(
            "SUBSCRIPTION_EXPORT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--tag", default="", help="appended to the result file's name")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Dagster's beta warnings, once per definitions build
    with tempfile.TemporaryDirectory(prefix="cycle_bench_") as tmp:
        report = measure(args, Path(tmp))
    profile_text = report.pop("profile_text", None)
    stem = f"{report['date']}-cycle-{args.source}-{args.history}{args.tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    if profile_text:
        (args.out / f"{stem}-profile.txt").write_text(profile_text)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
