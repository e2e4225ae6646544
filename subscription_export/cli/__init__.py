"""`subscription-export`: set up capture, run exports, inspect state.

One module per command group; this module registers them on the app, in the order `--help`
lists them (top-level commands first, then the command groups).
"""

from __future__ import annotations

from subscription_export.cli import bench, dashboard, demo, run, status
from subscription_export.cli.app import app, main
from subscription_export.cli.conflicts import conflicts_app
from subscription_export.cli.dead_letters import dead_letters_app
from subscription_export.cli.quarantine import quarantine_app
from subscription_export.cli.sandbox import sandbox_app

for command in (
    run.init,
    run.run,
    status.status,
    run.export,
    demo.demo,
    run.verify,
    bench.bench,
    dashboard.dashboard,
):
    app.command()(command)
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(dead_letters_app, name="dead-letters")
app.add_typer(conflicts_app, name="conflicts")
app.add_typer(sandbox_app, name="sandbox")

__all__ = ["app", "main"]
