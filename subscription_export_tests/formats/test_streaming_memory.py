"""Streaming: a window's export holds a bounded number of rows, whatever the window's size.

The export runs in a fresh process so Arrow's peak allocation belongs to it alone. (Flatness
from 1M to 3M changes and the exporter's RSS come from `make bench`.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from subscription_export.bench import fill_change_log
from subscription_export.core.settings import Settings
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.helpers import writer

BATCH = 5_000
_EXPORT = """
import json, sys
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from subscription_export.runtime import Project
from subscription_export.export.flow import export_window_file, stream_window
from subscription_export.core.settings import Settings, replace
from subscription_export.state.windows import Window

hi, out = int(sys.argv[1]), Path(sys.argv[2])
settings = replace(Settings.from_env(), export_dir=out, state_url=f"sqlite:///{out}/state.db")
project = Project(settings)
largest = max(b.num_rows for b in stream_window(project, Window(1, hi)).batches())
for fmt in ("parquet", "csv", "jsonl"):
    export_window_file(project, fmt, Window(1, hi))
parquet = pq.ParquetFile(project.file_path("parquet", Window(1, hi).key))
print(json.dumps({
    "largest_batch": largest,
    "rows": parquet.metadata.num_rows,
    "largest_row_group": max(
        parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)
    ),
    "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
}))
"""


def _export(settings: Settings, hi: int, out: Path) -> dict[str, float]:
    env = {**settings.as_env(), "SUBSCRIPTION_EXPORT_READ_BATCH_SIZE": str(BATCH)}
    result = subprocess.run(
        [sys.executable, "-c", _EXPORT, str(hi), str(out)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_export_memory_is_bounded_below_the_window_size(settings: Settings, tmp_path: Path) -> None:
    engine = writer(settings.source_url)
    init_demo_source(engine)
    fill_change_log(engine, 200_000, subscriptions=20_000)
    with engine.connect() as conn:
        images_mb = conn.execute(
            sa.text(
                "SELECT SUM(LENGTH(CAST(COALESCE(after, before) AS TEXT))) / 1048576.0"
                " FROM subscription_change_log"
            )
        ).scalar_one()

    run = _export(settings, 200_000, tmp_path / "out")

    assert (run["rows"], run["largest_row_group"]) == (200_000, 65_536)
    assert run["largest_batch"] <= BATCH
    # A streaming export holds a few read batches and one Parquet row group: well under the
    # window's JSON images alone (60-67 MB here), let alone its Arrow form.
    assert float(images_mb) > 55
    assert run["arrow_peak_mb"] < 48
