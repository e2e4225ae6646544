"""`dashboard`: metrics as an offline HTML file or a live page."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from subscription_export.cli.app import console, settings_of
from subscription_export.metrics.dashboard import render_dashboard, serve_dashboard
from subscription_export.metrics.store import (
    DashboardData,
    load_dashboard_data,
    sample_capture,
)
from subscription_export.reconcile.outbox import pending_counts
from subscription_export.runtime import Project
from subscription_export.source.sequencer import last_lsn
from subscription_export.status import open_problem_counts

app = typer.Typer(add_completion=False)


def dashboard_data(project: Project, since: dt.datetime | None) -> DashboardData:
    """What one page or scrape shows: the metrics store plus the positions read now."""
    dead, conflicts = open_problem_counts(project)
    return load_dashboard_data(
        project.state,
        project.watermarks.all(),
        last_lsn(project.source),
        open_dead_letters=dead,
        open_conflicts=conflicts,
        since=since,
        pending_pushes=pending_counts(project.state),
        # Read now: the stored samples stop when the sensor (or `run --watch`) does.
        capture_now=sample_capture(project.source),
    )


@app.command()
def dashboard(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write one self-contained HTML file.")
    ] = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="Serve a live page (refreshes every 10 s).")
    ] = False,
    host: Annotated[str, typer.Option(help="Address for --serve.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port for --serve.")] = 8765,
    since_hours: Annotated[
        float | None, typer.Option("--since-hours", min=0, help="Only the last N hours.")
    ] = None,
) -> None:
    """Export metrics as an offline HTML dashboard (--out FILE) or a live page (--serve)."""
    if (out is None) == (not serve):
        raise typer.BadParameter("give exactly one of --out FILE or --serve")
    project = Project(settings_of(ctx), create=False)
    since = (
        None if since_hours is None else dt.datetime.now(dt.UTC) - dt.timedelta(hours=since_hours)
    )

    def load(since: dt.datetime | None = since) -> DashboardData:
        return dashboard_data(project, since)

    if out is not None:
        out.write_text(render_dashboard(load()), encoding="utf-8")
        console.print(f"dashboard written to {out}", markup=False)
        return
    console.print(
        f"dashboard on http://{host}:{port}/, Prometheus metrics on /metrics (Ctrl-C stops)",
        markup=False,
    )
    serve_dashboard(load, host, port, load_totals=lambda: load(None))
