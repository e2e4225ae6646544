"""The `snapshot` job as the UI launches it: rows as op 'r', progress in the run's tags and the
output metadata, a second run resumes nothing once finished."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from subscription_export.core.settings import Settings
from subscription_export.defs.definitions import build_definitions
from subscription_export.defs.snapshot import SNAPSHOT_JOB
from subscription_export.source.schema import init_source
from subscription_export.source.snapshot import snapshot_progress
from subscription_export_tests.source.snapshot_load import (
    app_table,
    count_r,
    replayed,
    table_images,
)


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [event] = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def test_snapshot_job_reports_progress_in_run_tags_and_metadata(
    source_url: str, tmp_path: Path
) -> None:
    engine = app_table(source_url, 120)
    init_source(engine)
    settings = Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
    )
    job = build_definitions(settings).resolve_job_def(SNAPSHOT_JOB)
    config = {"ops": {"snapshot_table": {"config": {"chunk_size": 50}}}}
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(run_config=config, instance=instance)
        assert result.success
        metadata = _metadata(result)
        assert (metadata["rows"], metadata["chunks"], metadata["finished"]) == (120, 3, True)
        tags = instance.get_run_by_id(result.run_id).tags  # type: ignore[union-attr]
        assert (tags["snapshot/rows"], tags["snapshot/chunks"]) == ("120", "3")
        assert tags["snapshot/finished"] == "true"

        again = job.execute_in_process(run_config=config, instance=instance)
        assert _metadata(again)["rows"] == 120 and count_r(engine) == 120  # nothing twice
    progress = snapshot_progress(engine)
    assert progress is not None and progress.finished
    assert replayed(engine) == table_images(engine)


def test_snapshot_rows_are_records_on_the_dashboard(source_url: str, tmp_path: Path) -> None:
    """Rows that existed before `init` enter as op 'r': the window that exports them must show
    them as records (and a quarantined row among them as a small error rate), not 0 records
    and 0 rows/s, with every quarantined row read as 100% errors."""
    from subscription_export.defs.runner import run_cycle
    from subscription_export.metrics.store import load_dashboard_data
    from subscription_export.runtime import Project

    engine = app_table(source_url, 120)
    init_source(engine)
    settings = Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
    )
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        snapshot = defs.resolve_job_def(SNAPSHOT_JOB).execute_in_process(instance=instance)
        assert snapshot.success
        cycle = run_cycle(settings, instance=instance)
    assert [r.success for r in cycle.runs] == [True]
    project = Project(settings)
    data = load_dashboard_data(project.state, project.watermarks.all(), 120, 0, 0)
    parquet = {c.consumer: c for c in data.consumers}["parquet"]
    assert (parquet.windows, parquet.records, parquet.errors) == (1, 120, 0)
    [export] = [e for e in data.exports if e.consumer == "parquet"]
    assert export.records == 120 and export.rows_per_s
