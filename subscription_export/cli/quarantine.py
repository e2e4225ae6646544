"""`quarantine list|history|replay|discard`: rows that could not be exported, and what was done
about them (see `subscription_export.quarantine_actions`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from subscription_export.cli.app import DB_INT_MAX, console, err_console, settings_of
from subscription_export.cli.shown import DataTable, marked
from subscription_export.delivery.config import load_destinations
from subscription_export.quarantine_actions import discard, replay
from subscription_export.runtime import Project
from subscription_export.state.quarantine import history, list_quarantine

app = typer.Typer(
    help="Rows that could not be exported.", no_args_is_help=True, add_completion=False
)

WindowOption = Annotated[str | None, typer.Option("--window", help="Only this window's entries.")]
LsnOption = Annotated[list[int] | None, typer.Option("--lsn", help="Only these LSNs (repeat).")]


@app.command("list")
def quarantine_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=DB_INT_MAX)] = 100,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also recovered and discarded entries.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Quarantined rows with their LSN, field and reason (newest first; open ones unless --all)."""
    statuses = () if show_all else ("open",)
    rows = list_quarantine(Project(settings_of(ctx), create=False).state, limit, statuses)
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = DataTable("window", "LSN", "status", "field", "reason")
    for r in rows:
        table.add_row(
            str(r["window_key"]),
            str(r["lsn"]),
            str(r["status"]),
            str(r["field"] or ""),
            str(r["reason"]),
        )
    console.print(table)
    console.print(f"{len(rows)} quarantined row(s) shown")


@app.command("history")
def quarantine_history(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Audited replays and discards: who, when, which LSNs, what came of it (newest first)."""
    rows = history(Project(settings_of(ctx), create=False).state, limit)
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = DataTable("at", "action", "by", "window", "LSNs", "recovered", "revision", "reason")
    for r in rows:
        table.add_row(
            str(r["at"]),
            str(r["action"]),
            str(r["actor"]),
            str(r["window_key"]),
            ",".join(map(str, r["lsns"])),  # type: ignore[call-overload]
            ",".join(map(str, r["recovered"])),  # type: ignore[call-overload]
            str(r["revision"] or ""),
            str(r["reason"] or ""),
        )
    console.print(table)


@app.command("replay")
def quarantine_replay(
    ctx: typer.Context,
    window: WindowOption = None,
    lsn: LsnOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Try open entries again; write the ones that convert now into their windows (new manifest
    revision) and send them to destinations that already have the window."""
    project = Project(settings_of(ctx))
    results = replay(project, load_destinations(), window_key=window, lsns=lsn or ())
    if as_json:
        console.print_json(json.dumps([r.as_json() for r in results], default=str))
    else:
        table = DataTable("window", "recovered", "still quarantined", "revision", "deliveries")
        for r in results:
            outcomes = ", ".join(f"{d.destination} {d.lsn} {d.outcome}" for d in r.deliveries)
            table.add_row(
                r.window_key,
                ",".join(map(str, r.recovered)),
                ",".join(str(q.lsn) for q in r.still_bad),
                str(r.revision),
                outcomes,
            )
        console.print(table)
        recovered = sum(len(r.recovered) for r in results)
        console.print(f"{recovered} change(s) recovered in {len(results)} window(s)")
    refused = [d for r in results for d in r.deliveries if d.outcome == "dead_letter"]
    if refused:
        # Recovered into the files but not delivered: the destination lacks the change until
        # its dead letter is replayed, which is no success (as `dead-letters replay` exits 1).
        for d in refused:
            err_console.print(
                marked(
                    "[red]{name}: LSN {lsn} not delivered[/red], now a dead letter: {detail}",
                    name=d.destination,
                    lsn=d.lsn,
                    detail=d.detail,
                ),
                highlight=False,
            )
        raise typer.Exit(1)


@app.command("discard")
def quarantine_discard(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the audit.")],
    window: WindowOption = None,
    lsn: LsnOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Mark open entries discarded: kept and audited, out of the files for good."""
    if window is None and not lsn:
        raise typer.BadParameter("name the entries: --window KEY and/or --lsn N")
    project = Project(settings_of(ctx))
    found = discard(project, reason=reason, window_key=window, lsns=lsn or ())
    if as_json:
        console.print_json(json.dumps(found))
        return
    count = sum(len(v) for v in found.values())
    console.print(f"{count} entr{'y' if count == 1 else 'ies'} discarded")
