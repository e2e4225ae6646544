"""`snapshot`: copy the rows a captured table already holds into the stream as `_op = 'r'`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from subscription_export.cli.app import console, settings_of
from subscription_export.cli.progress import progress_bar
from subscription_export.core.db import check_reachable, engine_for
from subscription_export.core.errors import ConfigError
from subscription_export.source.snapshot import (
    DEFAULT_CHUNK,
    SnapshotProgress,
    restart_snapshot,
    run_snapshot,
    snapshot_progress,
)

app = typer.Typer(add_completion=False)


def run_with_bar(source_url: str, table: str, chunk_size: int, quiet: bool) -> SnapshotProgress:
    """Run or resume the snapshot of `table` with a progress bar on stderr."""
    source = engine_for(source_url, writer=True)
    with progress_bar(quiet) as bar:
        task = bar.add_task(f"snapshot of {table}", total=None)

        def advance(step: SnapshotProgress) -> None:
            bar.update(task, completed=step.rows_done, total=step.rows_done + (step.remaining or 0))

        return run_snapshot(source, table, chunk_size, on_chunk=advance)


def describe(progress: SnapshotProgress, resumed_at: int) -> str:
    resumed = f" (resumed after {resumed_at} rows)" if resumed_at else ""
    return (
        f"snapshot of {progress.table}: {progress.rows_done} rows in {progress.chunks_done}"
        f" chunk{'' if progress.chunks_done == 1 else 's'}{resumed}, emitted as op 'r'"
    )


@app.command()
def snapshot(
    ctx: typer.Context,
    table: Annotated[
        str | None,
        typer.Option(help="The captured table (default: the first of SUBSCRIPTION_EXPORT_TABLES)."),
    ] = None,
    chunk_size: Annotated[
        int, typer.Option(min=1, help="Rows per chunk (one short transaction each).")
    ] = DEFAULT_CHUNK,
    restart: Annotated[
        bool, typer.Option(help="Read the whole table again, even if a snapshot finished.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Copy the rows a captured table holds into the stream as op 'r' (online, resumable)."""
    settings = settings_of(ctx)
    table = table or settings.captured_tables[0]
    if table not in settings.captured_tables:
        raise ConfigError(
            f"table {table!r} is not captured; captured: {', '.join(settings.captured_tables)}"
            " (SUBSCRIPTION_EXPORT_TABLES)"
        )
    source = engine_for(settings.source_url, writer=True)
    check_reachable(source, "source")
    before = snapshot_progress(source, table)
    if restart or before is None:
        restart_snapshot(source, table)
        before = None
    if before is not None and before.finished:
        done = before
    else:
        done = run_with_bar(settings.source_url, table, chunk_size, quiet=as_json)
    resumed_at = before.rows_done if before is not None and not before.finished else 0
    if as_json:
        console.print_json(json.dumps(done.as_dict() | {"resumed_after_rows": resumed_at}))
    elif before is not None and before.finished:
        console.print(
            f"snapshot of {table} already finished ({done.rows_done} rows at {done.finished_at});"
            " use --restart to read the table again"
        )
    else:
        console.print(describe(done, resumed_at))
