"""Many workers, one queue, object storage (issue 14, item 4).

* A backfill of 12 windows (40 in `make bench`) on a PostgreSQL-backed instance whose queue
  runs 4 at a time with the default process launcher, exporting to S3 (moto): each window
  exported by exactly one successful run, runs really concurrent, watermarks contiguous, no
  lease left.
* Two `run --watch` processes racing on one state database and one S3 prefix, as two nodes
  would: every window exported by exactly one of them, windows and watermarks contiguous to the
  log's end, no lease left.

`make bench` measures the same deployment at 1, 2 and 4 concurrent runs (bench/workers_bench.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from subscription_export.core.settings import Settings
from subscription_export.formats.verify import verify_exports
from subscription_export.runtime import Project
from subscription_export.source.sequencer import last_lsn
from subscription_export.state.windows import list_windows
from subscription_export_tests.defs.many_workers import (
    FORMATS,
    assert_each_window_once,
    assert_no_leases,
    contiguous,
    deployment,
    max_overlap,
)
from subscription_export_tests.formats.test_object_storage import source_settings
from subscription_export_tests.helpers import insert, writer
from subscription_export_tests.ui.dagster_processes import wait_until, without_pandas

pytestmark = [pytest.mark.integration, pytest.mark.slow]
AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
# 12 windows keep `make test` within its 10 minutes on 2 cores (a run costs its process launch,
# ~11 s of CPU); `make bench` (bench/workers_bench.py) backfills 40 windows at 1, 2 and 4
# concurrent runs with the same checks (assert_each_window_once) and fails if one does not hold.
WINDOWS = 12
CLI = [sys.executable, "-m", "subscription_export.cli"]


@pytest.mark.timeout(900)  # generous for a shared 2-core machine
def test_a_backfill_on_four_workers_exports_each_window_once_to_s3(
    dagster_db: str, s3_url: str, tmp_path: Path
) -> None:
    # Windows of 5 changes: a run's cost is its process launch, not its rows. The queue looks
    # for free slots every second (default 5 s) so the test measures runs, not the poll.
    env = {name: os.environ[name] for name in AWS}
    with deployment(tmp_path, dagster_db, s3_url, env, WINDOWS, 5, 4, dequeue_interval_s=1) as d:
        runs = d.wait_for_runs(d.backfill(), 840)
        settings = d.project.settings
        windows = d.windows

    assert len(windows) == WINDOWS
    assert 1 < max_overlap(runs) <= 4  # the queue ran them concurrently, never more than 4
    assert_each_window_once(settings, windows, runs)


def _watch(settings: Settings, tmp_path: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    """A `run --watch --json` worker; its cycle summaries go to a file the test can poll."""
    env = {**os.environ, **settings.as_env(), "DAGSTER_HOME": str(tmp_path / f"dh-{name}")}
    env = without_pandas(env)  # as installed in production: ~1 s less start-up per worker
    out = tmp_path / f"worker-{name}.json"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [*CLI, "run", "--watch", "--interval", "0.5", "--json", "--quiet"],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )
    return proc, out


def _summaries(out: Path) -> list[dict[str, Any]]:
    """A worker's finished cycles (one JSON summary per cycle; a cycle still being written is
    left for the next look)."""
    summaries: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    text = out.read_text().strip()
    while text:
        try:
            summary, end = decoder.raw_decode(text)
        except json.JSONDecodeError:
            break
        summaries.append(summary)
        text = text[end:].strip()
    return summaries


def _exported_by(out: Path) -> list[str]:
    """Window keys a worker's finished cycles exported."""
    return [r["window"] for s in _summaries(out) for r in s["runs"] if r["success"]]


@pytest.mark.timeout(600)
def test_two_watching_workers_export_each_window_once(
    pg_url: str, s3_url: str, tmp_path: Path
) -> None:
    settings = source_settings(tmp_path, s3_url).model_copy(update={"state_url": pg_url})
    settings = Settings(**{**settings.model_dump(), "window_max_changes": 30})

    def burst(n: int) -> None:
        with writer(settings.source_url).begin() as conn:
            for i in range(45):
                insert(conn, f"b{n}-{i}")

    burst(0)
    burst(1)  # both workers' first cycles find the same windows waiting
    workers = [_watch(settings, tmp_path, name) for name in ("a", "b")]
    project = Project(settings)
    try:
        # Both finished a first cycle on the waiting windows (they raced for them), then the
        # app writes more: a wait on the workers themselves, not a guess at their start-up.
        wait_until("both workers' first cycle", lambda: _first_cycles_done(workers), 120, 0.2)
        for n in (2, 3):  # the application keeps writing while both watch
            burst(n)
            time.sleep(1.5)
        end = last_lsn(project.source)
        deadline = time.monotonic() + 300

        def settled() -> bool:
            exported = {key for _, out in workers for key in _exported_by(out)}
            cut = {w.key for w in list_windows(project.state)}
            marks = project.watermarks.all() == dict.fromkeys(FORMATS, end)
            return marks and bool(cut) and cut <= exported

        while not settled():  # every window exported and its cycle reported
            for proc, _ in workers:
                assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, project.watermarks.all()
            time.sleep(1)
    finally:
        for proc, _ in workers:
            proc.send_signal(signal.SIGTERM)
        errors = [proc.communicate(timeout=60)[1] for proc, _ in workers]
    by_worker = [_exported_by(out) for _, out in workers]
    exported = Counter(key for keys in by_worker for key in keys)
    cut = list_windows(project.state)
    assert contiguous(cut, end), [(w.lo, w.hi) for w in cut]  # from 1 to the log's end
    assert project.watermarks.all() == dict.fromkeys(FORMATS, end)
    windows = [w.key for w in cut]
    assert exported == Counter(windows), (by_worker, errors)  # each window by one worker
    report = verify_exports(settings.export_dir)
    assert report.summary == f"{3 * len(windows)}/{3 * len(windows)} file(s) match their manifests"
    assert_no_leases(settings)


def _first_cycles_done(workers: list[tuple[subprocess.Popen[str], Path]]) -> bool | None:
    for proc, _ in workers:
        assert proc.poll() is None, proc.communicate()
    return True if all(_summaries(out) for _, out in workers) else None
