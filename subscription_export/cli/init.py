"""`init`: install capture on the source and create the state tables."""

from __future__ import annotations

import typer

from subscription_export.cli.app import console, err_console, settings_of
from subscription_export.cli.snapshot import describe, run_with_bar
from subscription_export.core.db import check_reachable, engine_for, redact
from subscription_export.runtime import init_state_tables
from subscription_export.source.schema import init_source
from subscription_export.source.snapshot import DEFAULT_CHUNK, snapshot_progress

app = typer.Typer(add_completion=False)


@app.command()
def init(ctx: typer.Context) -> None:
    """Install capture on the configured table (idempotent; re-run after adding columns)."""
    settings = settings_of(ctx)
    source = engine_for(settings.source_url, writer=True)
    check_reachable(source, "source")
    schema = init_source(source, settings.table)
    state = engine_for(settings.state_url, writer=True)
    check_reachable(state, "state")
    init_state_tables(state)
    console.print(
        f"capture installed on {redact(settings.source_url)}: schema version {schema.version},"
        f" {len(schema.columns)} columns captured; state in {redact(settings.state_url)}",
        highlight=False,
        markup=False,
    )
    key = ", ".join(schema.key)
    columns = ", ".join(f"{c.name} {c.type}" for c in schema.columns)
    console.print(
        f"table {settings.table}: key ({key}); columns {columns}", highlight=False, markup=False
    )
    for warning in schema.warnings:
        err_console.print(f"warning: {warning}", highlight=False, markup=False)
    # Rows the table held before its triggers existed enter the stream through the snapshot.
    pending = snapshot_progress(source, settings.table)
    if pending is not None and not pending.finished:
        done = run_with_bar(settings.source_url, pending.table, DEFAULT_CHUNK, quiet=False)
        console.print(describe(done, pending.rows_done))
