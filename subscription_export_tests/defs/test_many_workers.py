"""Many workers, one queue, object storage (issue 14, item 4).

* A backfill of every window on a PostgreSQL-backed instance whose queue runs 4 at a time with
  the default process launcher, exporting to S3 (moto): each window exported by exactly one
  successful run, runs really concurrent, watermarks contiguous, no lease left.
* Two `run --watch` processes racing on one state database and one S3 prefix, as two nodes
  would: every window exported by exactly one of them, watermarks at the end, no lease left.

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

import pytest
import sqlalchemy as sa

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
from subscription_export.formats.verify import verify_exports
from subscription_export.runtime import Project
from subscription_export.source.sequencer import last_lsn
from subscription_export.state.tables import leases
from subscription_export.state.windows import list_windows
from subscription_export_tests.defs.many_workers import deployment, max_overlap
from subscription_export_tests.formats.test_object_storage import source_settings
from subscription_export_tests.helpers import insert, writer
from subscription_export_tests.ui.dagster_processes import run_tags

pytestmark = [pytest.mark.integration, pytest.mark.slow]
AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
FORMATS = ("parquet", "csv", "jsonl")
CLI = [sys.executable, "-m", "subscription_export.cli"]


def _no_leases(settings: Settings) -> None:
    with engine_for(settings.state_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(leases)).scalar_one() == 0


@pytest.mark.timeout(600)
def test_a_backfill_on_four_workers_exports_each_window_once_to_s3(
    dagster_db: str, s3_url: str, tmp_path: Path
) -> None:
    windows = 12
    env = {name: os.environ[name] for name in AWS}
    with deployment(tmp_path, dagster_db, s3_url, env, windows, 25, 4) as d:
        backfill = d.backfill()
        runs = d.wait_for_runs(backfill, 480)
        settings = d.project.settings
        keys = [w.key for w in d.windows]

    assert [r["status"] for r in runs] == ["SUCCESS"] * windows, runs
    per_window = Counter(run_tags(r)["dagster/partition"] for r in runs)
    assert per_window == Counter(keys)  # one run per window, none twice
    assert 1 < max_overlap(runs) <= 4  # the queue ran them concurrently, never more than 4
    project = Project(settings)
    end = last_lsn(project.source)
    assert project.watermarks.all() == dict.fromkeys(FORMATS, end)
    assert [w.key for w in list_windows(project.state)] == keys
    report = verify_exports(settings.export_dir)
    assert report.summary == f"{3 * windows}/{3 * windows} file(s) match their manifests"
    _no_leases(settings)


def _watch(settings: Settings, tmp_path: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    """A `run --watch --json` worker; its cycle summaries go to a file the test can poll."""
    env = {**os.environ, **settings.as_env(), "DAGSTER_HOME": str(tmp_path / f"dh-{name}")}
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


def _exported_by(out: Path) -> list[str]:
    """Window keys a worker's finished cycles exported (one JSON summary per cycle; a cycle
    still being written is left for the next look)."""
    keys: list[str] = []
    decoder = json.JSONDecoder()
    text = out.read_text().strip()
    while text:
        try:
            summary, end = decoder.raw_decode(text)
        except json.JSONDecodeError:
            break
        keys += [r["window"] for r in summary["runs"] if r["success"]]
        text = text[end:].strip()
    return keys


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
        time.sleep(8)
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
    assert (
        [(w.lo, w.hi) for w in cut]
        == list(  # contiguous from 1 to the log's end
            zip([1] + [w.hi + 1 for w in cut[:-1]], [w.hi for w in cut[:-1]] + [end], strict=True)
        )
    )
    windows = [w.key for w in cut]
    assert exported == Counter(windows), (by_worker, errors)  # each window by one worker
    report = verify_exports(settings.export_dir)
    assert report.summary == f"{3 * len(windows)}/{3 * len(windows)} file(s) match their manifests"
    _no_leases(settings)
