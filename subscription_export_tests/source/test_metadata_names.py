"""Column names a real table may have that the capture or the export uses itself.

The change log's own column names (`lsn`, `op`, `before`, `after`, …) and trigger words
(`new`, `old`, `tg_op`) are only JSON keys of the image: captured and exported as written.
The export's metadata names (`_lsn`, `_op`, …) head every file: a table column of the same
name made a second `_op` field, and a JSON Lines or CSV reader kept the column's value as the
change's `_op` (and `_lsn`) while the run reported success. `init` now refuses such a table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from subscription_export.core.columns import METADATA_COLUMNS
from subscription_export.core.settings import Settings
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.formats.schema import METADATA_FIELDS
from subscription_export.runtime import Project
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.helpers import writer

LOG_NAMES = (
    "lsn",
    "op",
    "before",
    "after",
    "image",
    "source_table",
    "subscription_id",
    "changed_at",
    "origin",
    "new",
    "old",
    "tg_op",
    "_lsn_",
)


def _settings(url: str, tmp_path: Path) -> Settings:
    return Settings(
        source_url=url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
        table="t",
    )


def test_log_and_trigger_names_are_exported_as_written(source_url: str, tmp_path: Path) -> None:
    engine = writer(source_url)
    quote = engine.dialect.identifier_preparer.quote_identifier
    columns = ", ".join(f"{quote(n)} text" for n in LOG_NAMES)
    values = ", ".join(f"'value of {n}'" for n in LOG_NAMES)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE t (id integer PRIMARY KEY, {columns})")
    settings = _settings(source_url, tmp_path)
    run_cli(["init"], settings, tmp_path)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO t VALUES (1, {values})")
        conn.exec_driver_sql("DELETE FROM t")
    project = Project(settings)
    [window] = cut_windows(project).new_windows
    paths = {fmt: export_window_file(project, fmt, window)[0].path for fmt in ("parquet", "jsonl")}  # type: ignore[arg-type]
    expected = {n: f"value of {n}" for n in LOG_NAMES}
    rows = pq.read_table(paths["parquet"]).to_pylist()
    lines = [json.loads(line) for line in Path(paths["jsonl"]).read_text().splitlines()]
    for exported in (rows, lines):
        assert [r["_op"] for r in exported] == ["c", "d"]
        assert [{n: r[n] for n in LOG_NAMES} for r in exported] == [expected, expected]


@pytest.mark.parametrize("name", ["_op", "_deleted"])
def test_a_column_named_like_export_metadata_is_refused_at_init(
    source_url: str, tmp_path: Path, name: str
) -> None:
    engine = writer(source_url)
    quote = engine.dialect.identifier_preparer.quote_identifier
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE t (id integer PRIMARY KEY, {quote(name)} text)")
    refused = run_cli(["init"], _settings(source_url, tmp_path), tmp_path, check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"table 't' has column(s) '{name}' named like the export's metadata columns" in (
        " ".join(refused.stderr.split())
    )
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_metadata_names_are_the_export_metadata_fields() -> None:
    assert tuple(f.name for f in METADATA_FIELDS) == METADATA_COLUMNS
