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
