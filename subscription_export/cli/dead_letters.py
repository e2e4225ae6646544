"""`dead-letters list|replay|discard`: changes a destination did not accept."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from subscription_export.cli.app import DB_INT_MAX, console, settings_of
from subscription_export.cli.progress import progress_bar
from subscription_export.cli.shown import DataTable, marked, shown
from subscription_export.delivery.config import load_destinations
from subscription_export.delivery.dead_letters import discard, held_behind, list_dead_letters
from subscription_export.delivery.window import ReplaySummary, replay_dead_letters
from subscription_export.runtime import Project
from subscription_export.state.leases import default_holder

app = typer.Typer(
    help="Changes a destination did not accept (see destinations.toml).",
    no_args_is_help=True,
    add_completion=False,
)


class DeadLetterStatus(StrEnum):
    open = "open"
    replayed = "replayed"
    discarded = "discarded"
    all = "all"


@app.command("list")
def dead_letters_list(
    ctx: typer.Context,
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
    status: Annotated[DeadLetterStatus, typer.Option(help="Which ones.")] = DeadLetterStatus.open,
    limit: Annotated[int, typer.Option(min=1, max=DB_INT_MAX)] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Dead letters by destination and LSN, with their error and attempts."""

    wanted = None if status is DeadLetterStatus.all else status.value
    letters = list_dead_letters(
        Project(settings_of(ctx), create=False).state,
        destination,
        status=wanted,  # type: ignore[arg-type]
        limit=limit,
    )
    if as_json:
        console.print_json(json.dumps([d.as_json() for d in letters]))
        return
    table = DataTable(
        "id", "destination", "window", "LSN", "subscription", "attempts", "status", "error"
    )
    for d in letters:
        table.add_row(
            str(d.id),
            d.destination,
            d.window_key,
            str(d.lsn),
            d.subscription_id,
            str(d.attempts),
            d.status,
            d.error[:120],
        )
    console.print(table)
    console.print(f"{len(letters)} dead letter(s) shown")


@app.command("replay")
def dead_letters_replay(
    ctx: typer.Context,
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
    ids: Annotated[
        list[int] | None,
        typer.Option("--id", min=1, max=DB_INT_MAX, help="Only these ids (repeatable)."),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Re-send open dead letters with their original idempotency keys, then deliver the windows
    that waited behind them. Exit 1 if some still fail."""
    project = Project(settings_of(ctx))
    config = load_destinations()
    todo = len(list_dead_letters(project.state, destination, status="open", ids=ids))
    if todo == 0:
        if as_json:
            console.print_json(json.dumps({"replayed": 0, "still_open": [], "caught_up": []}))
        else:
            console.print(
                "no open dead letters", shown(f"for {destination}" if destination else "")
            )
        return
    with progress_bar(quiet or as_json) as progress:
        task = progress.add_task("replaying dead letters", total=todo)
        summary = replay_dead_letters(
            project,
            config,
            default_holder(),
            destination=destination,
            ids=ids,
            on_result=lambda _result: progress.advance(task),
        )
    if as_json:
        console.print_json(json.dumps(_replay_json(summary)))
    else:
        _print_replay(summary)
    if summary.failed:
        raise typer.Exit(1)


def _print_replay(summary: ReplaySummary) -> None:
    console.print(f"replayed {summary.replayed}/{len(summary.results)} dead letter(s)")
    for r in summary.results:
        if not r.replayed:
            console.print(
                marked(
                    "  [red]still open[/red] #{id} {destination} LSN {lsn}: {error}",
                    id=r.letter.id,
                    destination=r.letter.destination,
                    lsn=r.letter.lsn,
                    error=r.error,
                ),
                highlight=False,
                soft_wrap=True,
            )
    for name, key in summary.completed_windows:
        console.print(shown(f"  {name}: window {key} completed"))
    for outcome in summary.caught_up:
        console.print(
            shown(
                f"  {outcome.destination}: window {outcome.window.key} {outcome.status}"
                f" ({outcome.delivered} delivered, {outcome.dead_lettered} dead-lettered)"
            )
        )
    console.print(
        marked(
            "[bold]watermarks[/bold]: {marks}",
            marks=", ".join(f"{name}={lsn}" for name, lsn in summary.watermarks.items()),
        )
    )


def _replay_json(summary: ReplaySummary) -> dict[str, Any]:
    return {
        "replayed": summary.replayed,
        "still_open": [
            {
                "id": r.letter.id,
                "destination": r.letter.destination,
                "lsn": r.letter.lsn,
                "error": r.error,
            }
            for r in summary.results
            if not r.replayed
        ],
        "completed_windows": [
            {"destination": name, "window": key} for name, key in summary.completed_windows
        ],
        "caught_up": [
            {
                "destination": o.destination,
                "window": o.window.key,
                "status": o.status,
                "delivered": o.delivered,
                "dead_lettered": o.dead_lettered,
            }
            for o in summary.caught_up
        ],
        "watermarks": summary.watermarks,
    }


@app.command("discard")
def dead_letters_discard(
    ctx: typer.Context,
    ids: Annotated[
        list[int],
        typer.Option("--id", min=1, max=DB_INT_MAX, help="Ids to give up on (repeatable)."),
    ],
) -> None:
    """Give up on dead letters: they stop blocking; re-run the window's sync to complete it."""
    project = Project(settings_of(ctx))
    count = discard(project.state, ids)
    console.print(f"discarded {count} open dead letter(s)")
    behind = held_behind(project.state, ids)
    if not behind:
        return
    # The later changes of those records waited behind them (per-record order): send them now.
    summary = replay_dead_letters(project, load_destinations(), default_holder(), ids=behind)
    console.print(f"sent the {len(behind)} change(s) held back behind them:")
    _print_replay(summary)
    if summary.failed:
        raise typer.Exit(1)
