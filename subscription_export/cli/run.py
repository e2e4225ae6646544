"""Set up capture and run exports: `init`, `run`, `export`, `verify`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from subscription_export.cli.app import console, err_console, progress_bar, project_of, settings_of
from subscription_export.core.db import check_reachable, engine_for, redact
from subscription_export.core.errors import RangeError
from subscription_export.core.settings import Settings
from subscription_export.source.schema import init_source
from subscription_export.state.windows import Window, find_window

if TYPE_CHECKING:
    from subscription_export.defs.runner import WindowRun
    from subscription_export.export.window import WindowStream
    from subscription_export.formats.writers import WrittenFile
    from subscription_export.runtime import Project


class OutputFormat(StrEnum):
    parquet = "parquet"
    csv = "csv"
    jsonl = "jsonl"


def init(ctx: typer.Context) -> None:
    """Create the source tables and capture triggers (idempotent; re-run after adding columns)."""
    from subscription_export.runtime import init_state_tables  # lazy: pulls in pyarrow

    settings = settings_of(ctx)
    source = engine_for(settings.source_url, writer=True)
    check_reachable(source, "source")
    schema = init_source(source)
    state = engine_for(settings.state_url, writer=True)
    check_reachable(state, "state")
    init_state_tables(state)
    console.print(
        f"capture installed on {redact(settings.source_url)}: schema version {schema.version},"
        f" {len(schema.columns)} columns captured; state in {redact(settings.state_url)}"
    )


def run(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="One cycle, then exit (default).")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Repeat every --interval seconds.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between cycles with --watch.")
    ] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    window: Annotated[
        list[str] | None,
        typer.Option(help="Re-export these registered windows only (repeatable)."),
    ] = None,
) -> None:
    """Sequence new changes, cut windows and export them through Dagster (runs show in the UI)."""
    if once and watch:
        raise typer.BadParameter("choose --once or --watch, not both")
    if window:
        if _export_windows(project_of(ctx), window, as_json, quiet):
            raise typer.Exit(1)
        return
    settings = settings_of(ctx)
    while True:
        failed = _run_one_cycle(settings, as_json, quiet)
        if not watch:
            if failed:
                raise typer.Exit(1)
            return
        time.sleep(interval)


def _run_json(r: WindowRun) -> dict[str, Any]:
    return {"window": r.window.key, "run_id": r.run_id, "success": r.success, "error": r.error}


def _export_windows(project: Project, keys: list[str], as_json: bool, quiet: bool) -> bool:
    from subscription_export.defs.runner import materialize_windows  # lazy: loads Dagster

    windows = []
    for key in keys:
        found = find_window(project.state, key)
        if found is None:
            raise RangeError(f"{key} is not a registered window; see `subscription-export status`")
        windows.append(found)
    with progress_bar(quiet) as progress:
        task = progress.add_task("exporting windows", total=len(windows))
        runs = materialize_windows(
            project.settings, windows, on_done=lambda _r: progress.advance(task)
        )
    if as_json:
        console.print_json(json.dumps({"runs": [_run_json(r) for r in runs]}))
    for r in runs:
        if not r.success:
            err_console.print(f"[red]window {r.window.key} failed[/red]: {r.error}")
    return any(not r.success for r in runs)


def _run_one_cycle(settings: Settings, as_json: bool, quiet: bool) -> bool:
    from subscription_export.defs.runner import run_cycle  # lazy: loads Dagster

    with progress_bar(quiet) as progress:
        task = progress.add_task("exporting windows", total=None)
        result = run_cycle(settings, on_done=lambda _run: progress.advance(task))
    if as_json:
        summary = {
            "sequenced": result.cut.sequenced.numbered,
            "last_lsn": result.cut.sequenced.last_lsn,
            "new_windows": [w.key for w in result.cut.new_windows],
            "runs": [_run_json(r) for r in result.runs],
            "pending_changes": result.cut.pending,
            "waiting_for_read_horizon": result.cut.sequenced.waiting,
        }
        console.print_json(json.dumps(summary))
    elif not quiet:
        console.print(
            f"last LSN {result.cut.sequenced.last_lsn}: {len(result.cut.new_windows)} new"
            f" window(s), {len(result.runs)} exported, {len(result.failed)} failed,"
            f" {result.cut.pending} change(s) waiting for the next window"
        )
        for failure in result.failed:
            err_console.print(f"[red]window {failure.window.key} failed[/red]: {failure.error}")
    return bool(result.failed)


def export(
    ctx: typer.Context,
    from_lsn: Annotated[int, typer.Option("--from-lsn", min=1, help="First LSN (inclusive).")],
    to_lsn: Annotated[int, typer.Option("--to-lsn", min=1, help="Last LSN (inclusive).")],
    fmt: Annotated[OutputFormat, typer.Option("--format", help="File format.")],
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Export any LSN range to one file (no watermark moves); same bytes as the window files."""
    # lazy: the export path loads pyarrow (and pandas through it when installed)
    from subscription_export.export.flow import stream_window
    from subscription_export.formats.writers import write_atomically

    if to_lsn < from_lsn:
        raise RangeError(f"--to-lsn {to_lsn} is before --from-lsn {from_lsn}")
    stream = stream_window(project_of(ctx), Window(from_lsn, to_lsn))
    with progress_bar(quiet or as_json) as progress:
        task = progress.add_task("exporting changes", total=to_lsn - from_lsn + 1)

        def counted() -> Iterator[Any]:
            for batch in stream.batches():
                yield batch
                progress.advance(task, batch.num_rows)

        written = write_atomically(fmt.value, counted(), stream.schema, out)
    _print_export(written, stream, fmt, Window(from_lsn, to_lsn), as_json)
    if stream.quarantined:
        err_console.print(
            f"[yellow]{len(stream.quarantined)} row(s) could not be exported:[/yellow]"
        )
        for q in stream.quarantined[:20]:
            err_console.print(f"  LSN {q.lsn} field {q.field}: {q.reason}")
        raise typer.Exit(1)


def _print_export(
    written: WrittenFile, stream: WindowStream, fmt: OutputFormat, lsns: Window, as_json: bool
) -> None:
    if not as_json:
        console.print(
            f"wrote {written.rows} rows ({dict(stream.rows_by_op)}) to {written.path},"
            f" {written.bytes} bytes, sha256 {written.sha256}"
        )
        return
    summary = {
        "path": str(written.path),
        "format": fmt.value,
        "from_lsn": lsns.lo,
        "to_lsn": lsns.hi,
        "rows": written.rows,
        "rows_by_op": dict(stream.rows_by_op),
        "bytes": written.bytes,
        "sha256": written.sha256,
        "quarantined": len(stream.quarantined),
    }
    console.print_json(json.dumps(summary))


def verify(
    ctx: typer.Context,
    window: Annotated[str | None, typer.Option(help="Only this window key.")] = None,
) -> None:
    """Re-hash every exported file against its manifest; exit 1 on any drift."""
    from subscription_export.formats.verify import check_manifest, manifests  # lazy: pyarrow

    export_dir = settings_of(ctx).export_dir
    found = manifests(export_dir, window)
    if not found:
        raise RangeError(
            f"no manifests under {export_dir}" + (f" for window {window}" if window else "")
        )
    bad = 0
    for manifest in found:
        outcome = check_manifest(export_dir, manifest)
        bad += not outcome.passed
        mark = "[green]ok[/green]" if outcome.passed else "[red]DRIFT[/red]"
        console.print(f"{mark}  {outcome.description}", highlight=False)
    console.print(f"{len(found) - bad}/{len(found)} file(s) match their manifests")
    if bad:
        raise typer.Exit(1)
