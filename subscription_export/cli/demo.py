"""`demo`: seed a sandbox source, export and deliver everything through Dagster, report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from subscription_export.cli.app import console, settings_of
from subscription_export.cli.progress import progress_bar
from subscription_export.cli.shown import marked
from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings, replace
from subscription_export.defs.runner import CycleResult, run_cycle
from subscription_export.runtime import Project, init_state_tables
from subscription_export.sandbox.demo import (
    destinations_file_for,
    plan_changes,
    running_destinations,
)
from subscription_export.sandbox.generator import GenerateResult, generate
from subscription_export.source.demo_table import init_demo_source
from subscription_export.status import gather_status

app = typer.Typer(add_completion=False)


@dataclass(frozen=True)
class DemoRun:
    """What one demo run did: the changes written, the cycle, what the sandbox systems hold."""

    settings: Settings
    made: GenerateResult
    cycle: CycleResult
    held: dict[str, dict[str, Any]]


@app.command()
def demo(
    ctx: typer.Context,
    subscriptions: Annotated[
        int, typer.Option(min=0, help="Subscriptions on a fresh source.")
    ] = 5_000,
    changes: Annotated[int, typer.Option(min=1, help="Changes on a fresh source.")] = 50_000,
    more_changes: Annotated[int, typer.Option(min=0, help="Changes added on later runs.")] = 5_000,
    seed: Annotated[int, typer.Option(help="Random seed of the sandbox data.")] = 7,
    window_size: Annotated[
        int, typer.Option(min=1, help="Changes per window in the demo.")
    ] = 10_000,
    quiet: Annotated[bool, typer.Option(help="Only the summary.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Seed a sandbox source, export everything through Dagster, print what happened."""
    # A demo should not wait for a partial window to age.
    settings = replace(settings_of(ctx), window_max_age_s=0.0, window_max_changes=window_size)
    run = _run_demo(settings, subscriptions, changes, more_changes, seed, quiet)
    report = gather_status(Project(settings), recent=len(run.cycle.runs) or 1)
    if as_json:
        console.print_json(json.dumps(_demo_json(run, report), default=str))
    else:
        _print_demo(run, report)
    if run.cycle.failed:
        raise typer.Exit(1)


def _run_demo(
    settings: Settings, subscriptions: int, changes: int, more_changes: int, seed: int, quiet: bool
) -> DemoRun:
    """Write the sandbox changes, then one cycle delivering to sandbox systems started for it."""
    source = engine_for(settings.source_url, writer=True)
    init_demo_source(source)
    init_state_tables(engine_for(settings.state_url, writer=True))
    plan = plan_changes(source, subscriptions, changes, more_changes)
    with progress_bar(quiet) as progress:
        task = progress.add_task("writing sandbox changes", total=plan.changes)
        made = generate(
            source,
            subscriptions=plan.subscriptions,
            changes=plan.changes,
            seed=seed,
            progress=lambda n: progress.advance(task, n),
        )
        export_task = progress.add_task("exporting and delivering windows", total=None)
        # The sandbox systems live as long as this command; the destinations point at them.
        with running_destinations(destinations_file_for(settings.state_url)) as (servers, path):
            cycle = run_cycle(
                settings, on_done=lambda _run: progress.advance(export_task), destinations=path
            )
            held = {name: server.system.state() for name, server in servers.items()}
    return DemoRun(settings, made, cycle, held)


def _demo_json(run: DemoRun, report: dict[str, Any]) -> dict[str, Any]:
    made = run.made
    return {
        "source": report["source"],
        "changes": {
            "written": made.changes,
            "created": made.created,
            "updated": made.updated,
            "deleted": made.deleted,
        },
        "new_windows": len(run.cycle.cut.new_windows),
        "runs": [
            {"window": r.window.key, "changes": r.window.changes, "run_id": r.run_id}
            | {"success": r.success, "error": r.error}
            for r in run.cycle.runs
        ],
        "consumers": report["consumers"],
        "sandbox": {name: _sandbox_summary(state) for name, state in run.held.items()},
        "export_dir": str(run.settings.export_dir),
    }


def _print_demo(run: DemoRun, report: dict[str, Any]) -> None:
    made, cycle = run.made, run.cycle
    console.print(
        marked("[bold]source[/bold] {source}", source=report["source"]),
        f": wrote {made.changes} changes"
        f" ({made.created} creates, {made.updated} updates, {made.deleted} deletes)",
        sep="",
        markup=False,
    )
    console.print(
        f"[bold]windows[/bold]: {len(cycle.cut.new_windows)} new,"
        f" {len(cycle.runs) - len(cycle.failed)}/{len(cycle.runs)} exported through Dagster"
    )
    for r in cycle.runs:
        mark = "[green]ok[/green]" if r.success else "[red]failed: {error}[/red]"
        console.print(
            marked(
                "  {key}  {changes} changes  run {run}  " + mark,
                key=r.window.key,
                changes=f"{r.window.changes:>7}",
                run=r.run_id[:8],
                error=r.error,
            )
        )
    marks = (f"{k}={v['watermark']} (lag {v['lag']})" for k, v in report["consumers"].items())
    console.print(marked("[bold]watermarks[/bold]: {marks}", marks=", ".join(marks)))
    systems = (f"{name} {_sandbox_summary(state)}" for name, state in run.held.items())
    console.print(
        marked(
            "[bold]sandbox systems[/bold] (this run's deliveries): {systems}",
            systems=", ".join(systems),
        )
    )
    console.print(
        marked(
            "[bold]files[/bold] under {path}/ (manifests in _manifests/)",
            path=run.settings.export_dir,
        )
    )
    console.print("see the runs and partitions in the Dagster UI: make ui")


def _sandbox_summary(state: dict[str, Any]) -> str:
    applied = sum(state.get("applications", {}).values())
    if "journal" in state:
        return f"{len(state['journal'])} journal entries ({applied} applied operations)"
    return f"{len(state.get('records', {}))} records ({applied} applied operations)"
