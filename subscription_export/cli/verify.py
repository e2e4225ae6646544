"""`verify`: re-hash exported files against their manifests."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from subscription_export.cli.app import console, settings_of
from subscription_export.cli.shown import shown
from subscription_export.formats.verify import verify_exports
from subscription_export.formats.writers import FORMATS
from subscription_export.runtime import Project
from subscription_export.state.progress import completed_keys

app = typer.Typer(add_completion=False)


@app.command()
def verify(
    ctx: typer.Context,
    window: Annotated[str | None, typer.Option(help="Only this window key.")] = None,
) -> None:
    """Re-hash every exported file against its manifest; exit 1 on any drift."""
    settings = settings_of(ctx)
    # The state database knows which windows were exported: a window whose files and
    # manifests were all removed (a bucket lifecycle rule, a deleted folder) is drift too.
    state = Project(settings).state
    recorded = [
        (dataset.asset(fmt), key)
        for dataset in settings.datasets
        for fmt in FORMATS
        for key in completed_keys(state, dataset.consumer(fmt))
    ]
    report = verify_exports(settings.export_dir, window, settings.datasets, recorded)
    for outcome in report.outcomes:
        mark = "[green]ok[/green]" if outcome.passed else "[red]DRIFT[/red]"
        console.print(Text.from_markup(mark), shown(outcome.description), highlight=False)
    console.print(shown(report.summary), highlight=False)
    if not report.passed:
        raise typer.Exit(1)
