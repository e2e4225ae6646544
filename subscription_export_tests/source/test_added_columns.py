"""`ALTER TABLE … ADD COLUMN … DEFAULT` (or a generated column, a rename, a type change with
USING) gives existing rows values without firing a trigger. The export carried null for them
until each row changed again, so a consumer replaying the files held null where the table
holds a value (even in a NOT NULL column). `init` now reads such a table again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.helpers import writer


def _replayed(settings: Settings) -> dict[int, dict[str, Any]]:
    rows = [
        r
        for f in sorted((Path(settings.export_dir) / "t_changes").glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
    ]
    held: dict[int, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r["_lsn"]):
        values = {k: v for k, v in row.items() if not k.startswith("_") and v is not None}
        if row["_op"] == "d":
            held.pop(row["id"])
        else:
            held[row["id"]] = values
    return held


@pytest.mark.parametrize(
    "alter, snapshotted",
    [
        ("ALTER TABLE t ADD COLUMN z text NOT NULL DEFAULT 'dflt'", True),
        ("ALTER TABLE t RENAME COLUMN v TO w", True),
        ("ALTER TABLE t ADD COLUMN z text", False),  # null in every row: nothing to send
    ],
    ids=["default", "rename", "nullable"],
)
def test_values_a_column_change_gives_existing_rows_are_exported(
    source_url: str, tmp_path: Path, alter: str, snapshotted: bool
) -> None:
    engine = writer(source_url)
    settings = Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
        table="t",
    )
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    run_cli(["init"], settings, tmp_path)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    run_cli(["run", "--once"], settings, tmp_path)
    with engine.begin() as conn:
        conn.exec_driver_sql(alter)
    again = run_cli(["init"], settings, tmp_path)
    assert ("snapshot of t: 2 rows" in again.stdout) is snapshotted, again.stdout
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE t SET id = 3 WHERE id = 2")
    run_cli(["run", "--once"], settings, tmp_path)

    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM t")).mappings().all()
    table = {r["id"]: {k: v for k, v in r.items() if v is not None} for r in rows}
    assert _replayed(settings) == table
