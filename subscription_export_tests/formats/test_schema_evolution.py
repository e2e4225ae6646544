"""Schema change mid-stream: one unified dataset, contracts, values kept, freeze stops cleanly."""

from __future__ import annotations

import threading

import pandas as pd
import pyarrow.dataset as pads
import pytest
import sqlalchemy as sa

from subscription_export.core.columns import BASE_COLUMNS, SourceColumn
from subscription_export.core.errors import SubscriptionExportError
from subscription_export.core.settings import Settings, replace
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.formats.contract import evolve, restrict
from subscription_export.runtime import Project
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.helpers import insert, update, writer


def export_all(project: Project) -> None:
    for window in cut_windows(project).new_windows:
        for fmt in ("parquet", "csv", "jsonl"):
            export_window_file(project, fmt, window)


def _add_column(url: str, ddl_type: str = "TEXT") -> None:
    engine = writer(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE subscriptions ADD COLUMN discount_code {ddl_type}"))
    init_demo_source(engine)  # re-installs the triggers so the new column is captured


def test_column_added_while_writers_keep_writing(settings: Settings) -> None:
    settings = replace(settings, window_max_changes=50)
    project = Project(settings)
    engine = writer(settings.source_url)
    stop = threading.Event()
    written: list[str] = []

    def keep_writing() -> None:
        i = 0
        while not stop.is_set() or i < 40:
            with engine.begin() as conn:
                insert(conn, f"bg{i}")
            written.append(f"bg{i}")
            i += 1

    thread = threading.Thread(target=keep_writing)
    thread.start()
    while len(written) < 20:
        pass
    export_all(project)
    _add_column(settings.source_url)
    with engine.begin() as conn:
        update(conn, "bg0", discount_code="WELCOME10")
    stop.set()
    thread.join()
    export_all(project)
    project_all = replace(settings, window_max_age_s=0.0)
    export_all(Project(project_all))

    parquet_dir = settings.export_dir / "subscription_changes"
    dataset = pads.dataset(sorted(parquet_dir.glob("*.parquet")), format="parquet")
    unified = pads.dataset(
        sorted(parquet_dir.glob("*.parquet")),
        schema=_unified_schema(dataset),
        format="parquet",
    ).to_table()
    ids = unified.column("id").to_pylist()
    assert sorted(set(ids)) == sorted(set(written))  # every change exported
    assert unified.column("_lsn").to_pylist() == list(range(1, unified.num_rows + 1))
    codes = dict(
        zip(
            unified.column("_lsn").to_pylist(),
            unified.column("discount_code").to_pylist(),
            strict=True,
        )
    )
    assert [c for c in codes.values() if c] == ["WELCOME10"]
    for path in sorted((settings.export_dir / "subscription_changes_csv").glob("*.csv")):
        frame = pd.read_csv(path)
        assert list(frame.columns[:6]) == [
            "_lsn",
            "_op",
            "_changed_at",
            "_origin",
            "_deleted",
            "_schema_version",
        ]


def _unified_schema(dataset: pads.Dataset):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.unify_schemas([f.physical_schema for f in dataset.get_fragments()])


def test_freeze_names_column_and_lsn_and_moves_no_watermark(settings: Settings) -> None:
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "a")
    project = Project(replace(settings, schema_contract="freeze"))
    export_all(project)  # registers the frozen schema
    marks = project.watermarks.all()
    _add_column(settings.source_url)
    with engine.begin() as conn:
        update(conn, "a", discount_code="X")
    window = cut_windows(project).new_windows[0]
    with pytest.raises(
        SubscriptionExportError, match=r"'discount_code' was added \(first at LSN 2"
    ):
        export_window_file(project, "parquet", window)
    assert project.watermarks.all() == marks
    assert not (settings.export_dir / "subscription_changes" / f"{window.key}.parquet").exists()


@pytest.mark.parametrize("mode", ["discard_row", "discard_value"])
def test_discard_modes_never_lose_silently(settings: Settings, mode: str) -> None:
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "a")
    project = Project(replace(settings, schema_contract=mode))
    export_all(project)
    _add_column(settings.source_url)
    with engine.begin() as conn:
        update(conn, "a", discount_code="X", status="paused")
    window = cut_windows(project).new_windows[0]
    outcome, _ = export_window_file(project, "parquet", window)
    assert "discount_code" not in outcome.schema.names
    if mode == "discard_row":
        assert outcome.rows == 0
        assert [(q.lsn, q.field) for q in outcome.quarantined] == [(2, "discount_code")]
    else:
        assert outcome.rows == 1 and outcome.dropped_values == {"discount_code": 1}
        assert outcome.metadata()["dropped_values.discount_code"] == 1


def test_type_change_makes_a_variant_column() -> None:
    v1 = (*BASE_COLUMNS, SourceColumn("seats", "text"))
    v2 = (*BASE_COLUMNS, SourceColumn("seats", "integer"))
    plan = evolve({1: v1, 2: v2}, newest=2)
    names = [c.name for c in plan.columns]
    assert names[-2:] == ["seats", "seats__v_integer"]
    assert plan.by_version[1].sources[-2:] == ("seats", None)
    assert plan.by_version[2].sources[-2:] == (None, "seats")
    widened = evolve({1: v2, 2: (*BASE_COLUMNS, SourceColumn("seats", "decimal"))}, newest=2)
    assert widened.columns[-1] == SourceColumn("seats", "decimal")  # integer → decimal widens
    dropped = evolve({1: v1, 2: BASE_COLUMNS}, newest=2)
    assert dropped.columns[-1].name == "seats" and dropped.by_version[2].sources[-1] is None
    frozen = restrict(v1, {1: v1, 2: v2}, {1: 1, 2: 7}, "discard_value")
    assert frozen.by_version[2].dropped_values == ("seats",)
