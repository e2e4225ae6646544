"""`status`: watermark and lag per consumer, pending changes, recent windows, open problems."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from subscription_export.cli.app import console, err_console, settings_of
from subscription_export.cli.shown import DataTable, marked, shown
from subscription_export.core.errors import ConfigError
from subscription_export.delivery.config import load_destinations
from subscription_export.runtime import Project
from subscription_export.source.holders import Holder
from subscription_export.source.installed import truncate_gap_line, uncaptured_line
from subscription_export.source.snapshot import unfinished_line
from subscription_export.status import gather_status

app = typer.Typer(add_completion=False)


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Watermark and lag per consumer, pending changes, recent windows."""
    report = gather_status(
        Project(settings_of(ctx), create=False), destinations=_configured_destinations()
    )
    if as_json:
        console.print_json(json.dumps(report))
        return
    console.print(
        marked(
            "source {source}  last LSN [bold]{lsn}[/bold]",
            source=report["source"],
            lsn=report["last_lsn"],
        )
    )
    console.print(
        f"pending: {report['changes_not_in_a_window']} change(s) not yet in a window,"
        f" {report['unsequenced_changes']} not yet sequenced"
    )
    for holder in report["held_by"]:
        console.print("held by", shown(Holder(**holder).describe()), highlight=False)
    if len(report["tables"]) > 1:
        tables = DataTable("table", "assets", "snapshot")
        for name, info in report["tables"].items():
            tables.add_row(name, ", ".join(info["assets"]), info["snapshot"] or "")
        console.print(tables)
    table = DataTable("consumer", "watermark", "lag", "blocked by")
    for name, info in report["consumers"].items():
        table.add_row(name, str(info["watermark"]), str(info["lag"]), info["blocked_by"] or "")
    console.print(table)
    windows = DataTable("recent window", "changes")
    for w in report["recent_windows"]:
        windows.add_row(w["key"], str(w["changes"]))
    console.print(windows)
    _print_problems(report)


def _print_problems(report: dict[str, Any]) -> None:
    for table in report["uncaptured_tables"]:
        console.print(shown(uncaptured_line(table)), highlight=False, soft_wrap=True)
    for table, partitions in report["truncate_uncaptured_partitions"].items():
        console.print(shown(truncate_gap_line(table, partitions)), highlight=False, soft_wrap=True)
    for table, progress in report["snapshots"].items():
        if not progress["finished"]:  # one line, unwrapped: it names the command to run
            line = unfinished_line(table, progress["rows_done"])
            console.print(shown(line), highlight=False, soft_wrap=True)
    if report["feed_cursors"]:
        console.print(
            "change feeds (applied/seen): "
            + ", ".join(
                f"{name} {c['applied']}/{c['requested']}"
                for name, c in report["feed_cursors"].items()
            ),
            highlight=False,
            markup=False,
        )
    pushes = report["pending_pushes"]
    if pushes:
        console.print(
            "pending pushes: "
            + ", ".join(f"{name} {n}" for name, n in sorted(pushes.items()))
            + " (sent by the next reconcile: subscription-export reconcile)",
            highlight=False,
            markup=False,
        )
    console.print(
        f"open dead letters: {report['open_dead_letters']}"
        " (subscription-export dead-letters list), conflicts queued for a person:"
        f" {report['open_conflicts']} (subscription-export conflicts list), quarantined"
        f" changes: {report['open_quarantine']} (subscription-export quarantine list)",
        highlight=False,
    )


def _configured_destinations() -> list[str]:
    """Every destination the destinations file declares, so one that never advanced is listed;
    a file that does not load is said once and the rest of the status still printed."""
    try:
        return list(load_destinations().names)
    except ConfigError as exc:
        err_console.print(marked("destinations not listed: {exc}", exc=exc), highlight=False)
        return []
