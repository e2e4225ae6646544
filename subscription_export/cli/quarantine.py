"""`quarantine list`: rows that could not be exported."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from subscription_export.cli.app import DB_INT_MAX, console, settings_of
from subscription_export.cli.shown import DataTable
from subscription_export.runtime import Project
from subscription_export.state.quarantine import list_quarantine

app = typer.Typer(
    help="Rows that could not be exported.", no_args_is_help=True, add_completion=False
)


@app.command("list")
def quarantine_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=DB_INT_MAX)] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Quarantined rows with their LSN, field and reason (newest first)."""
    rows = list_quarantine(Project(settings_of(ctx)).state, limit)
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = DataTable("window", "LSN", "field", "reason")
    for r in rows:
        table.add_row(str(r["window_key"]), str(r["lsn"]), str(r["field"] or ""), str(r["reason"]))
    console.print(table)
    console.print(f"{len(rows)} quarantined row(s) shown")
