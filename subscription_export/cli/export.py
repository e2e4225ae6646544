"""`export`: any LSN range to one file, with the same bytes as the window files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated

import pyarrow as pa
import typer

from subscription_export.cli.app import DB_INT_MAX, console, err_console, settings_of
from subscription_export.cli.progress import progress_bar
from subscription_export.cli.shown import shown
from subscription_export.core.errors import RangeError
from subscription_export.core.locations import export_location, parse_storage_options
from subscription_export.core.secrets import mask_url
from subscription_export.export.flow import stream_window
from subscription_export.export.window import WindowStream
from subscription_export.formats.writers import WrittenFile, write_atomically
from subscription_export.runtime import Project
from subscription_export.state.windows import Window

app = typer.Typer(add_completion=False)


class OutputFormat(StrEnum):
    parquet = "parquet"
    csv = "csv"
    jsonl = "jsonl"


@app.command()
def export(
    ctx: typer.Context,
    from_lsn: Annotated[
        int, typer.Option("--from-lsn", min=1, max=DB_INT_MAX, help="First LSN (inclusive).")
    ],
    to_lsn: Annotated[
        int, typer.Option("--to-lsn", min=1, max=DB_INT_MAX, help="Last LSN (inclusive).")
    ],
    fmt: Annotated[OutputFormat, typer.Option("--format", help="File format.")],
    out: Annotated[
        str, typer.Option("--out", help="File to write: a path or an s3://, gs://, az:// URL.")
    ],
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    table: Annotated[
        str | None,
        typer.Option(help="Whose changes: a captured table (default: the first configured)."),
    ] = None,
) -> None:
    """Export any LSN range to one file (no watermark moves); same bytes as the window files."""
    if to_lsn < from_lsn:
        raise RangeError(f"--to-lsn {to_lsn} is before --from-lsn {from_lsn}")
    lsns = Window(from_lsn, to_lsn)
    settings = settings_of(ctx)
    target = export_location(out, parse_storage_options(settings.storage_options))
    project = Project(settings)
    dataset = project.dataset_of(table) if table else project.primary
    stream = stream_window(project, lsns, dataset=dataset)
    with progress_bar(quiet or as_json) as progress:
        task = progress.add_task("exporting changes", total=to_lsn - from_lsn + 1)

        def counted() -> Iterator[pa.RecordBatch]:
            for batch in stream.batches():
                yield batch
                progress.advance(task, batch.num_rows)

        written = write_atomically(
            fmt.value,
            counted(),
            stream.schema,
            target,
            neutralize_formulas=settings.csv_neutralize_formulas,
        )
    _print_written(written, stream, fmt, lsns, as_json)
    if stream.quarantined:
        err_console.print(
            f"[yellow]{len(stream.quarantined)} row(s) could not be exported:[/yellow]"
        )
        for q in stream.quarantined[:20]:
            err_console.print(shown(f"  LSN {q.lsn} field {q.field}: {q.reason}"))
        raise typer.Exit(1)


def _print_written(
    written: WrittenFile, stream: WindowStream, fmt: OutputFormat, lsns: Window, as_json: bool
) -> None:
    if not as_json:
        where = mask_url(str(written.path))
        console.print(
            shown(
                f"wrote {written.rows} rows ({dict(stream.rows_by_op)}) to {where},"
                f" {written.bytes} bytes, sha256 {written.sha256}"
            )
        )
        return
    summary = {
        "path": mask_url(str(written.path)),
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
