"""`conflicts list|show|resolve|history`: conflicts queued for a person, and every sync
decision about a subscription."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.text import Text

from subscription_export.cli.app import DB_INT_MAX, console, err_console, settings_of
from subscription_export.cli.shown import DataTable, marked, shown
from subscription_export.delivery.config import load_destinations
from subscription_export.reconcile.feeds import ReconcileError
from subscription_export.reconcile.manual_queue import (
    ResolveReport,
    describe_conflict,
    history,
    resolve_conflict,
)
from subscription_export.reconcile.sync_state import (
    Conflict,
    dumps,
    get_conflict,
    list_conflicts,
    loads,
)
from subscription_export.runtime import Project

app = typer.Typer(
    help="Bidirectional sync: conflicts queued for a person, and every sync decision.",
    no_args_is_help=True,
    add_completion=False,
)


class Take(StrEnum):
    local = "local"
    remote = "remote"
    merged = "merged"


def _record_cell(record: dict[str, Any] | None, name: str) -> str:
    if record is None:
        return "(deleted)"
    return "(absent)" if name not in record else json.dumps(record[name])


@app.command("list")
def conflicts_list(
    ctx: typer.Context,
    destination: Annotated[str | None, typer.Option(help="Only this system.")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Resolved ones too (default: open only).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Conflicts a `manual` strategy queued: system, subscription, conflicting fields."""
    found = list_conflicts(
        Project(settings_of(ctx), create=False).state,
        status=None if show_all else "open",
        destination=destination,
    )
    if as_json:
        console.print_json(json.dumps([describe_conflict(c) for c in found]))
        return
    table = DataTable("id", "system", "subscription", "fields", "status", "opened (UTC)")
    for c in found:
        table.add_row(
            str(c.id),
            c.destination,
            c.subscription_id,
            ", ".join(c.fields),
            c.status,
            c.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
    what = "conflict(s)" if show_all else "open conflict(s)"
    console.print(f"{len(found)} {what}")


@app.command("show")
def conflicts_show(
    ctx: typer.Context,
    conflict_id: Annotated[
        int, typer.Argument(metavar="ID", min=1, max=DB_INT_MAX, help="Conflict id.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One conflict: base, local and remote side by side, conflicting fields marked."""
    conflict = get_conflict(Project(settings_of(ctx), create=False).state, conflict_id)
    if conflict is None:
        raise ReconcileError(f"no conflict {conflict_id}; see `subscription-export conflicts list`")
    described = describe_conflict(conflict)
    if as_json:
        console.print_json(json.dumps(described))
        return
    console.print(
        marked(
            "conflict [bold]{id}[/bold] ({status}): {system} subscription {sub}, strategy {how}",
            id=conflict.id,
            status=conflict.status,
            system=conflict.destination,
            sub=conflict.subscription_id,
            how=conflict.strategy,
        ),
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        shown(
            f"local changed {described['local_changed_at']}, {conflict.destination} changed"
            f" {described['remote_changed_at']} (feed cursor {conflict.cursor})"
        ),
        highlight=False,
    )
    _print_sides(conflict, described)
    if conflict.resolution is not None:
        console.print(shown(f"resolution: {json.dumps(conflict.resolution)}"), highlight=False)
    else:
        console.print(
            f"resolve with: subscription-export conflicts resolve {conflict.id}"
            " --take local|remote|merged [--set field=value ...]"
        )


def _print_sides(conflict: Conflict, described: dict[str, Any]) -> None:
    """Base, local and remote field by field, the conflicting fields marked."""
    base, local, remote = described["base"], described["local"], described["remote"]
    names = sorted({*(base or {}), *(local or {}), *(remote or {})} - {"id"})
    table = DataTable("field", "base", "local (source)", f"remote ({conflict.destination})", "")
    for name in names:
        mark = Text.from_markup("[red]conflict[/red]") if name in conflict.fields else ""
        table.add_row(
            name,
            _record_cell(base, name) if base is not None else "(none)",
            _record_cell(local, name),
            _record_cell(remote, name),
            mark,
        )
    console.print(table)


@app.command("resolve")
def conflicts_resolve(
    ctx: typer.Context,
    conflict_id: Annotated[
        int, typer.Argument(metavar="ID", min=1, max=DB_INT_MAX, help="Conflict id.")
    ],
    take: Annotated[
        Take,
        typer.Option(
            help="The conflicting fields take the source's values (local), the system's"
            " (remote) or those given by --set (merged); fields changed on one side only merge."
            " When one side deleted the record: that side's version (local or remote)."
        ),
    ],
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="field=value (repeatable; `null` sets NULL)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Settle a conflict through the reconcile's apply path: write-back (origin = the system),
    sync base, audit entry, and a push of the result to the system."""
    report = resolve_conflict(
        Project(settings_of(ctx)),
        load_destinations(),
        conflict_id,
        take.value,  # type: ignore[arg-type]
        sets or [],
    )
    if as_json:
        console.print_json(json.dumps(_resolve_json(report)))
    else:
        _print_resolved(report)
    dead = report.pushes.dead_letter_errors
    for error in report.pushes.errors:
        if error in dead:
            continue
        err_console.print(
            marked(
                "[yellow]push not accepted yet[/yellow] (the next reconcile run re-sends it): {e}",
                e=error,
            ),
            highlight=False,
        )
    for error in dead:
        # Runs never re-send a dead letter: the resolved record stays off the system until
        # someone replays it, so this is no success (`reconcile` exits 1 for the same).
        err_console.print(
            marked(
                "[red]push refused for the last time, now a dead letter[/red] (the resolution is"
                " in the source, not in {system}; replay with `subscription-export dead-letters"
                " replay --destination {system}`): {e}",
                system=report.destination,
                e=error,
            ),
            highlight=False,
            soft_wrap=True,
        )
    if dead:
        raise typer.Exit(1)


def _resolve_json(report: ResolveReport) -> dict[str, Any]:
    return {
        "conflict": report.conflict_id,
        "destination": report.destination,
        "subscription": report.subscription_id,
        "take": report.take,
        "record": loads(dumps(report.target)),
        "written_back": report.written_back,
        "push_planned": report.push_planned,
        **report.pushes.metadata(),
    }


def _print_resolved(report: ResolveReport) -> None:
    result = "deleted" if report.target is None else "updated"
    console.print(
        shown(
            f"conflict {report.conflict_id} resolved (--take {report.take}):"
            f" subscription {report.subscription_id} {result}"
            + (" in the source" if report.written_back else " (the source already held it)")
        ),
        highlight=False,
    )
    if report.push_planned:
        console.print(
            shown(
                f"{report.destination}: {report.pushes.pushed} pushed,"
                f" {report.pushes.deferred} waiting for the window delivery"
            ),
            highlight=False,
        )


@app.command("history")
def conflicts_history(
    ctx: typer.Context,
    subscription: Annotated[str, typer.Option("--subscription", help="Subscription id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every sync decision about a subscription, oldest first (the audit log)."""
    entries = history(Project(settings_of(ctx), create=False), subscription)
    if as_json:
        console.print_json(json.dumps(entries))
        return
    table = DataTable("at (UTC)", "system", "ref", "strategy", "outcome", "decisions")
    for e in entries:
        decisions = "; ".join(
            f"{d['field']}: {d['winner']}" for d in e["detail"].get("decisions", [])
        )
        table.add_row(
            e["at"].replace("T", " ")[:19],
            e["destination"],
            e["ref"],
            e["strategy"],
            e["outcome"],
            decisions,
        )
    console.print(table)
    console.print(f"{len(entries)} decision(s) about", shown(subscription), highlight=False)
