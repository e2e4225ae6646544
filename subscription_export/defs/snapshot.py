"""Job `snapshot`: the online snapshot of a captured table, launched from the UI.

The work is `source.snapshot.run_snapshot`; this op only reports it. Progress goes to the run's
tags (`snapshot/rows`, `snapshot/chunks`, at most once a second, so the run list shows how far
a long snapshot is) and to the output's metadata when it ends. A run that is terminated (or
whose process dies) loses at most the chunk in flight; the next run resumes after it.
"""

import time

import dagster as dg

from subscription_export.core.db import engine_for
from subscription_export.defs.resources import ExportSettings
from subscription_export.source.snapshot import (
    DEFAULT_CHUNK,
    SnapshotProgress,
    restart_snapshot,
    run_snapshot,
    snapshot_progress,
)

SNAPSHOT_JOB = "snapshot"
_TAG_EVERY_S = 1.0


class SnapshotConfig(dg.Config):
    table: str | None = None  # default: the first captured table (SUBSCRIPTION_EXPORT_TABLES)
    chunk_size: int = DEFAULT_CHUNK
    restart: bool = False  # read the whole table again even if a snapshot finished


def _tags(progress: SnapshotProgress) -> dict[str, str]:
    return {
        "snapshot/table": progress.table,
        "snapshot/rows": str(progress.rows_done),
        "snapshot/chunks": str(progress.chunks_done),
        "snapshot/finished": str(progress.finished).lower(),
    }


@dg.op(description="Copy the table's rows into the change log as op 'r', chunk by chunk.")
def snapshot_table(
    context: dg.OpExecutionContext, config: SnapshotConfig, settings: ExportSettings
) -> dg.Output[int]:
    source = engine_for(settings.settings().source_url, writer=True)
    captured = settings.settings().captured_tables
    table = config.table or captured[0]
    if table not in captured:
        raise dg.Failure(
            f"table {table!r} is not captured; captured: {', '.join(captured)}"
            " (SUBSCRIPTION_EXPORT_TABLES)",
            allow_retries=False,
        )
    before = snapshot_progress(source, table)
    if config.restart or before is None:
        restart_snapshot(source, table)
        before = None
    resumed_after = before.rows_done if before is not None and not before.finished else 0
    started, last_tagged = time.monotonic(), 0.0

    def report(step: SnapshotProgress) -> None:
        nonlocal last_tagged
        if time.monotonic() - last_tagged >= _TAG_EVERY_S or step.finished:
            context.instance.add_run_tags(context.run_id, _tags(step))
            context.log.info(
                f"snapshot of {step.table}: {step.rows_done} rows, {step.remaining} to go"
            )
            last_tagged = time.monotonic()

    done = run_snapshot(source, table, config.chunk_size, on_chunk=report)
    context.instance.add_run_tags(context.run_id, _tags(done))
    elapsed = time.monotonic() - started
    metadata = {
        "table": done.table,
        "rows": done.rows_done,
        "chunks": done.chunks_done,
        "resumed_after_rows": resumed_after,
        "finished": done.finished,
        "rows_per_s": round((done.rows_done - resumed_after) / elapsed, 1) if elapsed else 0.0,
    }
    return dg.Output(done.rows_done, metadata=metadata)


@dg.job(
    name=SNAPSHOT_JOB,
    description="Online snapshot of a captured table (rows as op 'r'; resumable, one short"
    " transaction per chunk).",
    tags={"subscription_export/kind": "snapshot"},
)
def snapshot_job() -> None:
    snapshot_table()
