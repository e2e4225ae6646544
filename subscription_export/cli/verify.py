"""`verify`: re-hash exported files against their manifests."""

from __future__ import annotations

from typing import Annotated

import typer

from subscription_export.cli.app import console, settings_of
from subscription_export.core.errors import RangeError
from subscription_export.formats.verify import check_manifest, manifests

app = typer.Typer(add_completion=False)


@app.command()
def verify(
    ctx: typer.Context,
    window: Annotated[str | None, typer.Option(help="Only this window key.")] = None,
) -> None:
    """Re-hash every exported file against its manifest; exit 1 on any drift."""
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
