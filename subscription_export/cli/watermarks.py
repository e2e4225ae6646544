"""`watermarks list` and `watermarks migrate`: see and move the per-consumer watermarks."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from subscription_export.cli.app import console, settings_of
from subscription_export.cli.shown import DataTable
from subscription_export.core.errors import ConfigError
from subscription_export.core.secrets import mask_url
from subscription_export.runtime import Project
from subscription_export.state.watermark_moves import Move, merge_watermarks, open_store

app = typer.Typer(
    help="Watermark per consumer: list them, or migrate them between the state DB and Redis.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("list")
def watermarks_list(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Every consumer's watermark in the configured store (WATERMARK_URL, else the state DB)."""
    settings = settings_of(ctx)
    store = mask_url(settings.watermark_url or settings.state_url)
    marks = Project(settings, create=False).watermarks.all()
    if as_json:
        console.print_json(json.dumps({"store": store, "watermarks": marks}))
        return
    table = DataTable("consumer", "watermark")
    for name, lsn in marks.items():
        table.add_row(name, str(lsn))
    console.print(table)
    console.print(f"{len(marks)} watermark(s) in {store}", highlight=False, markup=False)


@app.command("migrate")
def watermarks_migrate(
    ctx: typer.Context,
    from_url: Annotated[
        str | None, typer.Option("--from", help="Store to copy from [default: the state DB].")
    ] = None,
    to_url: Annotated[
        str | None,
        typer.Option("--to", help="Store to copy to [default: WATERMARK_URL, else the state DB]."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Copy watermarks from one store to another; the higher one wins, none is lowered."""
    settings = settings_of(ctx)
    source_url = from_url or settings.state_url
    target_url = to_url or settings.watermark_url or settings.state_url
    if source_url == target_url:
        raise ConfigError(
            f"--from and --to are the same store ({mask_url(source_url)}); name the other one"
            " with --from URL or --to URL"
        )
    moves = merge_watermarks(open_store(source_url), open_store(target_url))
    shown_from, shown_to = mask_url(source_url), mask_url(target_url)
    if as_json:
        report = {"from": shown_from, "to": shown_to, "moves": [m.as_dict() for m in moves]}
        console.print_json(json.dumps(report))
        return
    for move in moves:
        console.print(_described(move), highlight=False, markup=False)
    moved = sum(m.moved for m in moves)
    console.print(
        f"moved {moved} of {len(moves)} watermark(s) from {shown_from} to {shown_to}",
        highlight=False,
        markup=False,
    )


def _described(move: Move) -> str:
    if move.moved:
        return f"{move.consumer} {move.before} → {move.after}"
    return f"{move.consumer} {move.after} (kept)"
