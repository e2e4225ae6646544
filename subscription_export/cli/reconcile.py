"""`reconcile`: bring the ERP's and CRM's edits back and send the pushes that are due, now,
without Dagster (the sensor's runs do the same per system)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated

import typer

from subscription_export.cli.app import console, err_console, settings_of
from subscription_export.cli.shown import marked
from subscription_export.delivery.config import load_destinations
from subscription_export.reconcile.flow import SystemRun, reconcile_all
from subscription_export.reconcile.policies import load_policies
from subscription_export.runtime import Project
from subscription_export.state.leases import default_holder

app = typer.Typer(add_completion=False)


@app.command()
def reconcile(
    ctx: typer.Context,
    system: Annotated[
        str | None, typer.Option(help="Only this system (default: every ERP and CRM).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Bring ERP and CRM edits back and send the pushes that are due (exit 1 on a failure)."""
    project = Project(settings_of(ctx))
    runs = reconcile_all(
        project, load_destinations(), load_policies(), system=system, holder=default_holder()
    )
    if as_json:
        console.print_json(json.dumps([r.summary() for r in runs]))
    else:
        if not runs:
            console.print("no system with a change feed is configured")
        print_reconciled(runs)
    if any(r.failed for r in runs):
        raise typer.Exit(1)


def print_reconciled(runs: Sequence[SystemRun]) -> None:
    """One line per system (also printed by `run`)."""
    for run in runs:
        if run.report is None:
            err_console.print(
                marked(
                    "[red]{system}: not reconciled[/red]: {error}",
                    system=run.system,
                    error=run.error,
                )
            )
            continue
        s = run.report.summary()
        console.print(
            f"{run.system}: {s['changes']} change(s), {s['applied']} applied,"
            f" {s['conflicts_queued']} conflict(s) queued, {s['invalid']} invalid;"
            f" pushes {s['pushes_sent']} sent,"
            f" {s['pushes_waiting']} waiting for the delivery, {s['pushes_failed']} failed,"
            f" {s['pushes_dead_lettered']} dead-lettered",
            highlight=False,
            markup=False,
        )
        for bad in s["invalid_changes"]:  # remote data: every value escaped
            err_console.print(
                marked(
                    "  [yellow]invalid change[/yellow] at cursor {cursor}: {reason}",
                    cursor=bad["cursor"],
                    reason=bad["reason"],
                ),
                highlight=False,
            )
        left_off = s["invalid"] - len(s["invalid_changes"])
        if left_off > 0:  # the summary lists the first ones only (`apply.INVALID_SHOWN`)
            err_console.print(
                f"  ... and {left_off} more invalid change(s) (each in the audit log)",
                highlight=False,
                markup=False,
            )
        for error in run.report.pushes.errors:
            err_console.print(marked("  [red]push refused[/red]: {e}", e=error), highlight=False)
