"""`run`: whole cycles (sequence, cut, export and deliver windows through Dagster, then
reconcile every system with a change feed), once or repeatedly."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from subscription_export.cli.app import Context, console, err_console, settings_of
from subscription_export.cli.progress import progress_bar
from subscription_export.cli.quarantined import (
    NEEDS_OPERATOR,
    quarantined_in,
    unfinished_snapshot,
)
from subscription_export.cli.reconcile import print_reconciled
from subscription_export.cli.shown import marked, shown
from subscription_export.core.errors import RangeError
from subscription_export.core.settings import Settings
from subscription_export.core.stopping import Stopped, stop_on_signals, stoppable_sleep
from subscription_export.defs.runner import WindowRun, materialize_windows, run_cycle
from subscription_export.runtime import Project
from subscription_export.source.installed import (
    capture_gaps,
    truncate_gap_line,
    uncaptured_line,
    uncaptured_tables,
)
from subscription_export.state.windows import find_window

app = typer.Typer(add_completion=False)


@app.command()
def run(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="One cycle, then exit (default).")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Repeat every --interval seconds.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between cycles with --watch.")
    ] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    window: Annotated[
        list[str] | None,
        typer.Option(help="Re-export these registered windows only (repeatable)."),
    ] = None,
) -> None:
    """One whole cycle: export and deliver new windows through Dagster, then reconcile."""
    if once and watch:
        raise typer.BadParameter("choose --once or --watch, not both")
    settings = settings_of(ctx)
    debug = ctx.ensure_object(Context).debug
    try:
        with stop_on_signals():
            code = _run(settings, window, watch, interval, as_json, quiet, debug)
    except Stopped as stop:
        # The interrupted step unwound (its leases are released); nothing half-done is
        # recorded, so the next run redoes that window exactly.
        err_console.print(
            marked("{stop}: the current step was aborted and its leases released", stop=stop)
        )
        raise typer.Exit(stop.exit_code) from None
    if code:
        raise typer.Exit(code)


def _run(
    settings: Settings,
    window: list[str] | None,
    watch: bool,
    interval: float,
    as_json: bool,
    quiet: bool,
    debug: bool,
) -> int:
    """The exit code: 0, 1 (a window or push failed) or 3 (a person must act)."""
    if window:
        return _export_windows(settings, window, as_json, quiet, debug)
    while True:
        code = _run_one_cycle(settings, as_json, quiet, debug)
        if not watch:
            return code
        stoppable_sleep(interval)


def _print_failures(runs: list[WindowRun], debug: bool) -> None:
    """One line per failed window naming the original cause (Dagster's traceback with --debug)."""
    for r in runs:
        if r.success:
            continue
        if debug:
            err_console.print(shown(r.detail))
        err_console.print(
            marked("[red]window {key} failed[/red]: {error}", key=r.window.key, error=r.error)
        )


def _run_json(r: WindowRun) -> dict[str, Any]:
    return {
        "window": r.window.key,
        "run_id": r.run_id,
        "success": r.success,
        "error": r.error,
        "exit_code": r.exit_code,
    }


def _export_windows(
    settings: Settings, keys: list[str], as_json: bool, quiet: bool, debug: bool
) -> int:
    state = Project(settings).state
    windows = []
    for key in keys:
        found = find_window(state, key)
        if found is None:
            raise RangeError(f"{key} is not a registered window; see `subscription-export status`")
        windows.append(found)
    with progress_bar(quiet) as progress:
        task = progress.add_task("exporting windows", total=len(windows))
        runs = materialize_windows(settings, windows, on_done=lambda _r: progress.advance(task))
    if as_json:
        console.print_json(json.dumps({"runs": [_run_json(r) for r in runs]}))
    _print_failures(runs, debug)
    return max((r.exit_code for r in runs if not r.success), default=0)


def _run_one_cycle(settings: Settings, as_json: bool, quiet: bool, debug: bool) -> int:
    with progress_bar(quiet) as progress:
        task = progress.add_task("exporting windows", total=None)
        result = run_cycle(settings, on_done=lambda _run: progress.advance(task))
    done = [r.window for r in result.runs if r.success]
    project = Project(settings)
    quarantined = quarantined_in(project, done)
    uncaptured = uncaptured_tables(project.source, settings.captured_tables)
    gaps = capture_gaps(project.source, settings.captured_tables)
    if as_json:
        summary = {
            "sequenced": result.cut.sequenced.numbered,
            "last_lsn": result.cut.sequenced.last_lsn,
            "new_windows": [w.key for w in result.cut.new_windows],
            "runs": [_run_json(r) for r in result.runs],
            "pending_changes": result.cut.pending,
            "waiting_for_read_horizon": result.cut.sequenced.waiting,
            "held_by": [h.as_dict() for h in result.cut.sequenced.held_by],
            "reconciled": [r.summary() for r in result.reconciled],
            "quarantined": sum(q.count for q in quarantined),
            "quarantined_by_window": {q.window.key: q.count for q in quarantined},
            "held_back": result.held_back,
            "uncaptured_tables": uncaptured,
            "truncate_uncaptured_partitions": gaps,
        }
        console.print_json(json.dumps(summary))
    elif not quiet:
        console.print(
            f"last LSN {result.cut.sequenced.last_lsn}: {len(result.cut.new_windows)} new"
            f" window(s), {len(result.runs)} exported, {len(result.failed)} failed,"
            f" {result.cut.pending} change(s) waiting for the next window"
        )
        for holder in result.cut.sequenced.held_by:
            err_console.print("changes held back by", shown(holder.describe()))
        print_reconciled(result.reconciled)
    if not as_json:
        _print_failures(result.runs, debug)  # with --quiet too: a failure is not progress
    for q in quarantined:
        err_console.print(q.line(), highlight=False, markup=False)
    for name, why in result.held_back.items():
        # every cycle (and each of `--watch`, which goes on): the destination lacks records
        err_console.print(f"{name}: {why}", highlight=False, markup=False, soft_wrap=True)
    code = result.exit_code
    if any(q.everything for q in quarantined):
        # Every change of a window quarantined: nothing of it was exported; a person must act.
        code = max(code, NEEDS_OPERATOR)
    unfinished = unfinished_snapshot(project)
    if unfinished is not None:
        # Rows that existed before `init` are not in the stream yet: the exports are partial.
        err_console.print(unfinished, highlight=False, markup=False)
        code = max(code, NEEDS_OPERATOR)
    for table in uncaptured:
        # Its changes reach no log: every export of it is short, however green the windows.
        err_console.print(uncaptured_line(table), highlight=False, markup=False)
        code = max(code, NEEDS_OPERATOR)
    for table, partitions in gaps.items():
        err_console.print(truncate_gap_line(table, partitions), highlight=False, markup=False)
        code = max(code, NEEDS_OPERATOR)
    return code
