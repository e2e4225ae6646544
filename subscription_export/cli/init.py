"""`init`: install capture on the source and create the state tables."""

from __future__ import annotations

import typer

from subscription_export.cli.app import console, err_console, settings_of
from subscription_export.cli.snapshot import describe, run_with_bar
from subscription_export.core.db import check_reachable, engine_for, redact
from subscription_export.runtime import init_state_tables
from subscription_export.source.schema import CaptureSchema, init_tables, unconfigured_tables
from subscription_export.source.snapshot import DEFAULT_CHUNK, snapshot_progress

app = typer.Typer(add_completion=False)


@app.command()
def init(ctx: typer.Context) -> None:
    """Install capture on the configured tables (idempotent; re-run on table/column changes)."""
    settings = settings_of(ctx)
    source = engine_for(settings.source_url, writer=True)
    check_reachable(source, "source")
    schemas = init_tables(source, settings.captured_tables)
    state = engine_for(settings.state_url, writer=True)
    check_reachable(state, "state")
    init_state_tables(state)
    versions = ", ".join(f"{s.table} v{s.version} ({len(s.columns)} columns)" for s in schemas)
    console.print(
        f"capture installed on {redact(settings.source_url)}: {versions};"
        f" state in {redact(settings.state_url)}",
        highlight=False,
        markup=False,
    )
    for schema in schemas:
        _print_table(schema)
    _warn_unconfigured(unconfigured_tables(source, settings.captured_tables))
    # Rows a table held before its triggers existed enter the stream through the snapshot.
    for table in settings.captured_tables:
        pending = snapshot_progress(source, table)
        if pending is not None and not pending.finished:
            done = run_with_bar(settings.source_url, pending.table, DEFAULT_CHUNK, quiet=False)
            console.print(describe(done, pending.rows_done))


def _print_table(schema: CaptureSchema) -> None:
    key = ", ".join(schema.key)
    columns = ", ".join(f"{c.name} {c.type}" for c in schema.columns)
    console.print(
        f"table {schema.table}: key ({key}); columns {columns}", highlight=False, markup=False
    )
    for warning in schema.warnings:
        err_console.print(f"warning: {warning}", highlight=False, markup=False)


def _warn_unconfigured(left: list[str]) -> None:
    """A table captured before but no longer configured keeps its triggers (dropping them is
    the user's call: a mistyped setting must not stop capture), so say so."""
    for table in left:
        err_console.print(
            f"warning: table {table} is still captured (its triggers write the change log) but"
            " not configured: no asset exports it; add it to SUBSCRIPTION_EXPORT_TABLES, or"
            " drop its capture triggers (README, 'Use your own database')",
            highlight=False,
            markup=False,
        )
