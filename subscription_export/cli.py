"""`subscription-export`: set up capture, run exports, inspect state."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from subscription_export.core.db import engine_for, redact
from subscription_export.core.errors import RangeError, SubscriptionExportError
from subscription_export.core.settings import Settings

app = typer.Typer(
    help="Change data capture and incremental export of a subscription database, on Dagster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class OutputFormat(StrEnum):
    parquet = "parquet"
    csv = "csv"
    jsonl = "jsonl"


@dataclass
class Context:
    settings: Settings
    debug: bool


def _ctx(ctx: typer.Context) -> Context:
    return ctx.ensure_object(Context)  # type: ignore[no-any-return]


@app.callback()
def main_options(
    ctx: typer.Context,
    source_url: Annotated[
        str | None, typer.Option(help="Source DB [env SUBSCRIPTION_EXPORT_SOURCE_URL].")
    ] = None,
    state_url: Annotated[
        str | None, typer.Option(help="State DB [env SUBSCRIPTION_EXPORT_STATE_URL].")
    ] = None,
    export_dir: Annotated[
        Path | None, typer.Option(help="Export folder [env SUBSCRIPTION_EXPORT_EXPORT_DIR].")
    ] = None,
    watermark_url: Annotated[
        str | None,
        typer.Option(
            help="redis://… for watermarks in Redis [env SUBSCRIPTION_EXPORT_WATERMARK_URL]."
        ),
    ] = None,
    window_max_changes: Annotated[
        int | None, typer.Option(min=1, help="Changes per window at most.")
    ] = None,
    window_max_age: Annotated[
        float | None, typer.Option(min=0, help="Seconds before a partial window closes.")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    settings = (
        Settings.from_env()
        .with_overrides(
            source_url=source_url,
            state_url=state_url,
            export_dir=export_dir,
            watermark_url=watermark_url,
            window_max_changes=window_max_changes,
            window_max_age_s=window_max_age,
        )
        .resolved()
    )
    ctx.obj = Context(settings, debug)


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the source tables and capture triggers (idempotent; re-run after adding columns)."""
    from subscription_export.core.db import check_reachable
    from subscription_export.runtime import init_state_tables
    from subscription_export.source.schema import init_source

    settings = _ctx(ctx).settings
    source = engine_for(settings.source_url, writer=True)
    check_reachable(source, "source")
    schema = init_source(source)
    state = engine_for(settings.state_url, writer=True)
    check_reachable(state, "state")
    init_state_tables(state)
    console.print(
        f"capture installed on {redact(settings.source_url)}: schema version {schema.version},"
        f" {len(schema.columns)} columns captured; state in {redact(settings.state_url)}"
    )


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet or not err_console.is_terminal,
    )


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
    """Sequence new changes, cut windows and export them through Dagster (runs show in the UI)."""
    if once and watch:
        raise typer.BadParameter("choose --once or --watch, not both")
    settings = _ctx(ctx).settings
    if window:
        if _export_windows(settings, window, as_json, quiet):
            raise typer.Exit(1)
        return
    while True:
        failed = _run_one_cycle(settings, as_json, quiet)
        if not watch:
            if failed:
                raise typer.Exit(1)
            return
        time.sleep(interval)


def _export_windows(settings: Settings, keys: list[str], as_json: bool, quiet: bool) -> bool:
    from subscription_export.defs.runner import materialize_windows
    from subscription_export.runtime import Project
    from subscription_export.state.windows import find_window

    state = Project(settings).state
    windows = []
    for key in keys:
        found = find_window(state, key)
        if found is None:
            raise RangeError(f"{key} is not a registered window; see `subscription-export status`")
        windows.append(found)
    with _progress(quiet) as progress:
        task = progress.add_task("exporting windows", total=len(windows))
        runs = materialize_windows(settings, windows, on_done=lambda _r: progress.advance(task))
    report = [
        {"window": r.window.key, "run_id": r.run_id, "success": r.success, "error": r.error}
        for r in runs
    ]
    if as_json:
        console.print_json(json.dumps({"runs": report}))
    for r in runs:
        if not r.success:
            err_console.print(f"[red]window {r.window.key} failed[/red]: {r.error}")
    return any(not r.success for r in runs)


def _run_one_cycle(settings: Settings, as_json: bool, quiet: bool) -> bool:
    from subscription_export.defs.runner import run_cycle

    with _progress(quiet) as progress:
        task = progress.add_task("exporting windows", total=None)
        result = run_cycle(settings, on_done=lambda _run: progress.advance(task))
    summary = {
        "sequenced": result.cut.sequenced.numbered,
        "last_lsn": result.cut.sequenced.last_lsn,
        "new_windows": [w.key for w in result.cut.new_windows],
        "runs": [
            {"window": r.window.key, "run_id": r.run_id, "success": r.success, "error": r.error}
            for r in result.runs
        ],
        "pending_changes": result.cut.pending,
        "waiting_for_read_horizon": result.cut.sequenced.waiting,
    }
    if as_json:
        console.print_json(json.dumps(summary))
    elif not quiet:
        console.print(
            f"last LSN {summary['last_lsn']}: {len(result.cut.new_windows)} new window(s),"
            f" {len(result.runs)} exported, {len(result.failed)} failed,"
            f" {result.cut.pending} change(s) waiting for the next window"
        )
        for failure in result.failed:
            err_console.print(f"[red]window {failure.window.key} failed[/red]: {failure.error}")
    return bool(result.failed)


def gather_status(settings: Settings, recent: int = 5) -> dict[str, Any]:
    from subscription_export.formats.writers import FORMATS
    from subscription_export.reconcile.sync_state import all_cursors
    from subscription_export.runtime import Project
    from subscription_export.source.sequencer import last_lsn
    from subscription_export.state.windows import last_window_end, recent_windows
    from subscription_export.status import open_problem_counts

    project = Project(settings)
    top = last_lsn(project.source)
    with project.source.connect() as conn:
        unsequenced = conn.execute(
            sa.text("SELECT COUNT(*) FROM subscription_change_log WHERE lsn IS NULL")
        ).scalar_one()
    marks = project.watermarks.all()
    # Formats always; destinations once they have a watermark.
    names = [*FORMATS, *sorted(set(marks) - set(FORMATS))]
    consumers = {
        name: {"watermark": marks.get(name, 0), "lag": top - marks.get(name, 0)} for name in names
    }
    dead, conflicts = open_problem_counts(project)
    feeds = {
        name: {"applied": c.applied, "requested": c.requested}
        for name, c in sorted(all_cursors(project.state).items())
    }
    return {
        "source": redact(settings.source_url),
        "state": redact(settings.state_url),
        "export_dir": str(settings.export_dir),
        "last_lsn": top,
        "unsequenced_changes": int(unsequenced),
        "changes_not_in_a_window": top - last_window_end(project.state),
        "consumers": consumers,
        "recent_windows": [
            {"key": w.key, "changes": w.changes} for w in recent_windows(project.state, recent)
        ],
        "open_dead_letters": dead,
        "open_conflicts": conflicts,
        "feed_cursors": feeds,
    }


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Watermark and lag per consumer, pending changes, recent windows."""
    report = gather_status(_ctx(ctx).settings)
    if as_json:
        console.print_json(json.dumps(report))
        return
    console.print(f"source {report['source']}  last LSN [bold]{report['last_lsn']}[/bold]")
    console.print(
        f"pending: {report['changes_not_in_a_window']} change(s) not yet in a window,"
        f" {report['unsequenced_changes']} not yet sequenced"
    )
    table = Table("consumer", "watermark", "lag")
    for name, info in report["consumers"].items():
        table.add_row(name, str(info["watermark"]), str(info["lag"]))
    console.print(table)
    windows = Table("recent window", "changes")
    for w in report["recent_windows"]:
        windows.add_row(w["key"], str(w["changes"]))
    console.print(windows)
    if report["feed_cursors"]:
        console.print(
            "change feeds (applied/seen): "
            + ", ".join(
                f"{name} {c['applied']}/{c['requested']}"
                for name, c in report["feed_cursors"].items()
            ),
            highlight=False,
        )
    console.print(
        f"open dead letters: {report['open_dead_letters']}"
        " (subscription-export dead-letters list), conflicts queued for a person:"
        f" {report['open_conflicts']} (subscription-export conflicts list)",
        highlight=False,
    )


@app.command()
def export(
    ctx: typer.Context,
    from_lsn: Annotated[int, typer.Option("--from-lsn", min=1, help="First LSN (inclusive).")],
    to_lsn: Annotated[int, typer.Option("--to-lsn", min=1, help="Last LSN (inclusive).")],
    fmt: Annotated[OutputFormat, typer.Option("--format", help="File format.")],
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Export any LSN range to one file (no watermark moves); same bytes as the window files."""
    from collections.abc import Iterator

    from subscription_export.export.flow import stream_window
    from subscription_export.formats.writers import write_atomically
    from subscription_export.runtime import Project
    from subscription_export.state.windows import Window

    if to_lsn < from_lsn:
        raise RangeError(f"--to-lsn {to_lsn} is before --from-lsn {from_lsn}")
    settings = _ctx(ctx).settings
    project = Project(settings)
    stream = stream_window(project, Window(from_lsn, to_lsn))
    with _progress(quiet or as_json) as progress:
        task = progress.add_task("exporting changes", total=to_lsn - from_lsn + 1)

        def counted() -> Iterator[Any]:
            for batch in stream.batches():
                yield batch
                progress.advance(task, batch.num_rows)

        written = write_atomically(
            fmt.value,
            counted(),
            stream.schema,
            out,
            neutralize_formulas=settings.csv_neutralize_formulas,
        )
    if as_json:
        summary = {
            "path": str(written.path),
            "format": fmt.value,
            "from_lsn": from_lsn,
            "to_lsn": to_lsn,
            "rows": written.rows,
            "rows_by_op": dict(stream.rows_by_op),
            "bytes": written.bytes,
            "sha256": written.sha256,
            "quarantined": len(stream.quarantined),
        }
        console.print_json(json.dumps(summary))
    else:
        console.print(
            f"wrote {written.rows} rows ({dict(stream.rows_by_op)}) to {written.path},"
            f" {written.bytes} bytes, sha256 {written.sha256}"
        )
    if stream.quarantined:
        err_console.print(
            f"[yellow]{len(stream.quarantined)} row(s) could not be exported:[/yellow]"
        )
        for q in stream.quarantined[:20]:
            err_console.print(f"  LSN {q.lsn} field {q.field}: {q.reason}")
        raise typer.Exit(1)


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
    from dataclasses import replace

    from subscription_export.defs.runner import run_cycle
    from subscription_export.runtime import init_state_tables
    from subscription_export.sandbox.generator import generate
    from subscription_export.sandbox.server import running_sandbox
    from subscription_export.source.schema import init_source

    # A demo should not wait for a partial window to age.
    settings = replace(_ctx(ctx).settings, window_max_age_s=0.0, window_max_changes=window_size)
    source = engine_for(settings.source_url, writer=True)
    init_source(source)
    init_state_tables(engine_for(settings.state_url, writer=True))
    with source.connect() as conn:
        existing = conn.execute(
            sa.text("SELECT COUNT(*) FROM subscription_change_log")
        ).scalar_one()
    todo = changes if existing == 0 else more_changes
    with _progress(quiet) as progress:
        task = progress.add_task("writing sandbox changes", total=todo)
        made = generate(
            source,
            subscriptions=subscriptions if existing == 0 else max(1, todo // 20),
            changes=todo,
            seed=seed,
            progress=lambda n: progress.advance(task, n),
        )
        export_task = progress.add_task("exporting and delivering windows", total=None)
        with running_sandbox() as servers:
            # The sandbox systems live as long as this command; point the destinations at them.
            destinations = settings.state_url.removeprefix("sqlite:///")
            config = Path(destinations).with_name("demo_destinations.toml")
            config.write_text(
                "".join(
                    f'[destinations.{name}]\nbase_url = "{server.url}"\nmax_concurrency = 8\n'
                    for name, server in servers.items()
                )
            )
            os.environ["SUBSCRIPTION_EXPORT_DESTINATIONS"] = str(config)
            result = run_cycle(settings, on_done=lambda _run: progress.advance(export_task))
            held = {name: server.system.state() for name, server in servers.items()}
    report = gather_status(settings, recent=len(result.runs) or 1)
    if as_json:
        summary = {
            "source": report["source"],
            "changes": {
                "written": made.changes,
                "created": made.created,
                "updated": made.updated,
                "deleted": made.deleted,
            },
            "new_windows": len(result.cut.new_windows),
            "runs": [
                {"window": r.window.key, "changes": r.window.changes, "run_id": r.run_id}
                | {"success": r.success, "error": r.error}
                for r in result.runs
            ],
            "consumers": report["consumers"],
            "sandbox": {name: _sandbox_summary(state) for name, state in held.items()},
            "export_dir": str(settings.export_dir),
        }
        console.print_json(json.dumps(summary, default=str))
        if result.failed:
            raise typer.Exit(1)
        return
    console.print(
        f"[bold]source[/bold] {report['source']}: wrote {made.changes} changes"
        f" ({made.created} creates, {made.updated} updates, {made.deleted} deletes)"
    )
    console.print(
        f"[bold]windows[/bold]: {len(result.cut.new_windows)} new,"
        f" {len(result.runs) - len(result.failed)}/{len(result.runs)} exported through Dagster"
    )
    for r in result.runs:
        mark = "[green]ok[/green]" if r.success else f"[red]failed: {r.error}[/red]"
        console.print(
            f"  {r.window.key}  {r.window.changes:>7} changes  run {r.run_id[:8]}  {mark}"
        )
    console.print(
        "[bold]watermarks[/bold]: "
        + ", ".join(
            f"{k}={v['watermark']} (lag {v['lag']})" for k, v in report["consumers"].items()
        )
    )
    console.print(
        "[bold]sandbox systems[/bold] (this run's deliveries): "
        + ", ".join(f"{name} {_sandbox_summary(state)}" for name, state in held.items())
    )
    console.print(f"[bold]files[/bold] under {settings.export_dir}/ (manifests in _manifests/)")
    console.print("see the runs and partitions in the Dagster UI: make ui")
    if result.failed:
        raise typer.Exit(1)


def _sandbox_summary(state: dict[str, Any]) -> str:
    applied = sum(state.get("applications", {}).values())
    if "journal" in state:
        return f"{len(state['journal'])} journal entries ({applied} applied operations)"
    return f"{len(state.get('records', {}))} records ({applied} applied operations)"


@app.command()
def verify(
    ctx: typer.Context,
    window: Annotated[str | None, typer.Option(help="Only this window key.")] = None,
) -> None:
    """Re-hash every exported file against its manifest; exit 1 on any drift."""
    from subscription_export.formats.verify import verify_exports

    report = verify_exports(_ctx(ctx).settings.export_dir, window)
    for outcome in report.outcomes:
        mark = "[green]ok[/green]" if outcome.passed else "[red]DRIFT[/red]"
        console.print(f"{mark}  {outcome.description}", highlight=False)
    console.print(report.summary)
    if not report.passed:
        raise typer.Exit(1)


quarantine_app = typer.Typer(help="Rows that could not be exported.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Quarantined rows with their LSN, field and reason (newest first)."""
    from subscription_export.runtime import Project
    from subscription_export.state.quarantine import list_quarantine

    rows = list_quarantine(Project(_ctx(ctx).settings).state, limit)
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table("window", "LSN", "field", "reason")
    for r in rows:
        table.add_row(str(r["window_key"]), str(r["lsn"]), str(r["field"] or ""), str(r["reason"]))
    console.print(table)
    console.print(f"{len(rows)} quarantined row(s) shown")


@app.command()
def bench(
    changes: Annotated[
        int, typer.Option(min=10_000, help="Changes in the benchmark window.")
    ] = 1_000_000,
    source: Annotated[str, typer.Option(help="sqlite or postgresql.")] = "sqlite",
    pg_url: Annotated[
        str, typer.Option(help="PostgreSQL for --source postgresql.")
    ] = "postgresql://postgres@127.0.0.1:5432/test",
    workdir: Annotated[Path, typer.Option(help="Scratch folder.")] = Path(
        ".subscription_export/bench"
    ),
    results: Annotated[Path, typer.Option(help="Where the JSON result goes.")] = Path(
        "bench/results"
    ),
    skip_pandas: Annotated[
        bool, typer.Option(help="Skip the (slow, memory-hungry) pandas baseline.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole result as JSON.")
    ] = False,
) -> None:
    """Export one window of N generated changes to all formats; write bench/results/*.json."""
    from subscription_export.bench import BENCH_STAGES, run_bench

    if source not in ("sqlite", "postgresql"):
        raise typer.BadParameter("--source is sqlite or postgresql")
    stages = [s for s in BENCH_STAGES if not (skip_pandas and s == "pandas")]
    with _progress(quiet or as_json) as progress:
        task = progress.add_task("benchmark", total=len(stages))

        def on_stage(stage: str) -> None:
            progress.update(task, completed=stages.index(stage), description=f"bench: {stage}")

        report = run_bench(changes, source, workdir, results, pg_url, skip_pandas, on_stage)
        progress.update(task, completed=len(stages))
    if as_json:
        console.print_json(json.dumps(report))
        return
    table = Table(title=f"{changes:,} changes, {source}", show_edge=False)
    for column in ("format", "rows/s", "wall s", "MB"):
        table.add_column(column, justify="right" if column != "format" else "left")
    for fmt, figures in report["formats"].items():
        table.add_row(
            fmt,
            f"{figures['rows_per_s']:,}",
            f"{figures['wall_s']}",
            f"{figures['bytes'] / 2**20:.0f}",
        )
    console.print(table)
    baselines = ", ".join(f"{k} {v['rows_per_s']:,} rows/s" for k, v in report["baselines"].items())
    console.print(
        f"peak RSS {report['peak_rss_mb']} MB; baselines: {baselines};"
        f" parquet/COPY {report['parquet_vs_copy']};"
        f" incremental 10k {report['incremental_10k_s']} s"
    )
    console.print(f"written to {report['written_to']}")


dead_letters_app = typer.Typer(
    help="Changes a destination did not accept (see destinations.toml).", no_args_is_help=True
)
app.add_typer(dead_letters_app, name="dead-letters")


class DeadLetterStatus(StrEnum):
    open = "open"
    replayed = "replayed"
    discarded = "discarded"
    all = "all"


@dead_letters_app.command("list")
def dead_letters_list(
    ctx: typer.Context,
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
    status: Annotated[DeadLetterStatus, typer.Option(help="Which ones.")] = DeadLetterStatus.open,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Dead letters by destination and LSN, with their error and attempts."""
    from subscription_export.delivery.dead_letters import list_dead_letters
    from subscription_export.runtime import Project

    wanted = None if status is DeadLetterStatus.all else status.value
    letters = list_dead_letters(
        Project(_ctx(ctx).settings).state,
        destination,
        status=wanted,
        limit=limit,  # type: ignore[arg-type]
    )
    if as_json:
        console.print_json(json.dumps([d.as_json() for d in letters]))
        return
    table = Table(
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


@dead_letters_app.command("replay")
def dead_letters_replay(
    ctx: typer.Context,
    destination: Annotated[str | None, typer.Option(help="Only this destination.")] = None,
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="Only these ids (repeatable).")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Re-send open dead letters with their original idempotency keys, then deliver the windows
    that waited behind them. Exit 1 if some still fail."""
    from subscription_export.delivery.config import load_destinations
    from subscription_export.delivery.dead_letters import list_dead_letters
    from subscription_export.delivery.window import replay_dead_letters
    from subscription_export.runtime import Project
    from subscription_export.state.leases import default_holder

    project = Project(_ctx(ctx).settings)
    config = load_destinations()
    todo = len(list_dead_letters(project.state, destination, status="open", ids=ids))
    if todo == 0:
        if as_json:
            console.print_json(json.dumps({"replayed": 0, "still_open": [], "caught_up": []}))
        else:
            console.print("no open dead letters" + (f" for {destination}" if destination else ""))
        return
    with _progress(quiet or as_json) as progress:
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
        console.print_json(json.dumps(_replay_summary(summary)))
        if summary.failed:
            raise typer.Exit(1)
        return
    console.print(f"replayed {summary.replayed}/{len(summary.results)} dead letter(s)")
    for r in summary.results:
        if not r.replayed:
            console.print(
                f"  [red]still open[/red] #{r.letter.id} {r.letter.destination} LSN"
                f" {r.letter.lsn}: {r.error}",
                highlight=False,
            )
    for name, key in summary.completed_windows:
        console.print(f"  {name}: window {key} completed")
    for outcome in summary.caught_up:
        console.print(
            f"  {outcome.destination}: window {outcome.window.key} {outcome.status}"
            f" ({outcome.delivered} delivered, {outcome.dead_lettered} dead-lettered)"
        )
    console.print(
        "[bold]watermarks[/bold]: "
        + ", ".join(f"{name}={lsn}" for name, lsn in summary.watermarks.items())
    )
    if summary.failed:
        raise typer.Exit(1)


def _replay_summary(summary: Any) -> dict[str, Any]:
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


@dead_letters_app.command("discard")
def dead_letters_discard(
    ctx: typer.Context,
    ids: Annotated[list[int], typer.Option("--id", help="Ids to give up on (repeatable).")],
) -> None:
    """Give up on dead letters: they stop blocking; re-run the window's sync to complete it."""
    from subscription_export.delivery.dead_letters import discard
    from subscription_export.runtime import Project

    count = discard(Project(_ctx(ctx).settings).state, ids)
    console.print(f"discarded {count} open dead letter(s)")


conflicts_app = typer.Typer(
    help="Bidirectional sync: conflicts queued for a person, and every sync decision.",
    no_args_is_help=True,
)
app.add_typer(conflicts_app, name="conflicts")


class Take(StrEnum):
    local = "local"
    remote = "remote"
    merged = "merged"


def _record_cell(record: dict[str, Any] | None, name: str) -> str:
    if record is None:
        return "(deleted)"
    return "(absent)" if name not in record else json.dumps(record[name])


@conflicts_app.command("list")
def conflicts_list(
    ctx: typer.Context,
    destination: Annotated[str | None, typer.Option(help="Only this system.")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Resolved ones too (default: open only).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Conflicts a `manual` strategy queued: system, subscription, conflicting fields."""
    from subscription_export.reconcile import flow as rc
    from subscription_export.reconcile import sync_state as st
    from subscription_export.runtime import Project

    found = st.list_conflicts(
        Project(_ctx(ctx).settings).state,
        status=None if show_all else "open",
        destination=destination,
    )
    if as_json:
        console.print_json(json.dumps([rc.describe_conflict(c) for c in found]))
        return
    table = Table("id", "system", "subscription", "fields", "status", "opened (UTC)")
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


@conflicts_app.command("show")
def conflicts_show(
    ctx: typer.Context,
    conflict_id: Annotated[int, typer.Argument(metavar="ID", help="Conflict id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One conflict: base, local and remote side by side, conflicting fields marked."""
    from subscription_export.reconcile import flow as rc
    from subscription_export.reconcile import sync_state as st
    from subscription_export.runtime import Project

    conflict = st.get_conflict(Project(_ctx(ctx).settings).state, conflict_id)
    if conflict is None:
        raise rc.ReconcileError(
            f"no conflict {conflict_id}; see `subscription-export conflicts list`"
        )
    shown = rc.describe_conflict(conflict)
    if as_json:
        console.print_json(json.dumps(shown))
        return
    console.print(
        f"conflict [bold]{conflict.id}[/bold] ({conflict.status}): {conflict.destination}"
        f" subscription {conflict.subscription_id}, strategy {conflict.strategy}",
        highlight=False,
    )
    console.print(
        f"local changed {shown['local_changed_at']}, {conflict.destination} changed"
        f" {shown['remote_changed_at']} (feed cursor {conflict.cursor})",
        highlight=False,
    )
    base, local, remote = shown["base"], shown["local"], shown["remote"]
    names = sorted({*(base or {}), *(local or {}), *(remote or {})} - {"id"})
    table = Table("field", "base", "local (source)", f"remote ({conflict.destination})", "")
    for name in names:
        mark = "[red]conflict[/red]" if name in conflict.fields else ""
        table.add_row(
            name,
            _record_cell(base, name) if base is not None else "(none)",
            _record_cell(local, name),
            _record_cell(remote, name),
            mark,
        )
    console.print(table)
    if conflict.resolution is not None:
        console.print(f"resolution: {json.dumps(conflict.resolution)}", highlight=False)
    else:
        console.print(
            f"resolve with: subscription-export conflicts resolve {conflict.id}"
            " --take local|remote|merged [--set field=value ...]"
        )


@conflicts_app.command("resolve")
def conflicts_resolve(
    ctx: typer.Context,
    conflict_id: Annotated[int, typer.Argument(metavar="ID", help="Conflict id.")],
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
    from subscription_export.delivery.config import load_destinations
    from subscription_export.reconcile import flow as rc
    from subscription_export.reconcile import sync_state as st
    from subscription_export.runtime import Project

    report = rc.resolve_conflict(
        Project(_ctx(ctx).settings),
        load_destinations(),
        conflict_id,
        take.value,  # type: ignore[arg-type]
        sets or [],
    )
    pushes = report.pushes
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "conflict": report.conflict_id,
                    "destination": report.destination,
                    "subscription": report.subscription_id,
                    "take": report.take,
                    "record": st.loads(st.dumps(report.target)),
                    "written_back": report.written_back,
                    "push_planned": report.push_planned,
                    **pushes.metadata(),
                }
            )
        )
    else:
        result = "deleted" if report.target is None else "updated"
        console.print(
            f"conflict {report.conflict_id} resolved (--take {report.take}):"
            f" subscription {report.subscription_id} {result}"
            + (" in the source" if report.written_back else " (the source already held it)"),
            highlight=False,
        )
        if report.push_planned:
            console.print(
                f"{report.destination}: {pushes.pushed} pushed, {pushes.deferred} waiting for the"
                " window delivery",
                highlight=False,
            )
    for error in pushes.errors:
        err_console.print(
            f"[yellow]push not accepted yet[/yellow] (the next reconcile run re-sends it): {error}",
            highlight=False,
        )


@conflicts_app.command("history")
def conflicts_history(
    ctx: typer.Context,
    subscription: Annotated[str, typer.Option("--subscription", help="Subscription id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every sync decision about a subscription, oldest first (the audit log)."""
    from subscription_export.reconcile import flow as rc
    from subscription_export.runtime import Project

    entries = rc.history(Project(_ctx(ctx).settings), subscription)
    if as_json:
        console.print_json(json.dumps(entries))
        return
    table = Table("at (UTC)", "system", "ref", "strategy", "outcome", "decisions")
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
    console.print(f"{len(entries)} decision(s) about {subscription}", highlight=False)


sandbox_app = typer.Typer(help="Mock ERP, CRM and accounting systems.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


class SandboxSystemName(StrEnum):
    erp = "erp"
    crm = "crm"
    accounting = "accounting"


@sandbox_app.command("serve")
def sandbox_serve(
    system: Annotated[SandboxSystemName, typer.Option(help="Which system.")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 0,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    faults: Annotated[
        Path | None, typer.Option(help="JSON fault plan (see sandbox/faults.py).")
    ] = None,
) -> None:
    """Serve one sandbox system in the foreground until Ctrl-C."""
    from subscription_export.core.errors import ConfigError
    from subscription_export.sandbox.faults import FaultPlan
    from subscription_export.sandbox.server import SandboxServer
    from subscription_export.sandbox.systems import make_system

    plan = None
    if faults is not None:
        try:
            plan = FaultPlan.from_json(json.loads(faults.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{faults}: not a fault plan ({exc})") from None
    server = SandboxServer(make_system(system.value, faults=plan), host=host, port=port)
    console.print(f"sandbox {system.value} listening on {server.url} (Ctrl-C stops it)")
    server.serve_in_foreground()


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
    import datetime as dt

    from subscription_export.metrics.dashboard import render_dashboard, serve_dashboard
    from subscription_export.metrics.store import DashboardData, load_dashboard_data
    from subscription_export.runtime import Project
    from subscription_export.source.sequencer import last_lsn
    from subscription_export.status import open_problem_counts

    if (out is None) == (not serve):
        raise typer.BadParameter("give exactly one of --out FILE or --serve")
    project = Project(_ctx(ctx).settings)
    since = (
        None if since_hours is None else dt.datetime.now(dt.UTC) - dt.timedelta(hours=since_hours)
    )

    def load() -> DashboardData:
        dead, conflicts = open_problem_counts(project)
        return load_dashboard_data(
            project.state,
            project.watermarks.all(),
            last_lsn(project.source),
            open_dead_letters=dead,
            open_conflicts=conflicts,
            since=since,
        )

    if out is not None:
        out.write_text(render_dashboard(load()), encoding="utf-8")
        console.print(f"dashboard written to {out}")
        return
    console.print(f"dashboard on http://{host}:{port}/ (Ctrl-C stops)")
    serve_dashboard(load, host, port)


def main() -> None:
    """Entry point: user errors as one line and exit code 2, tracebacks only with --debug."""
    debug = "--debug" in sys.argv
    # Dagster flags beta/preview APIs we use on purpose (partitioned checks, backfill policy).
    warnings.filterwarnings("ignore", message=r".*(beta|preview)", category=Warning)
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except SubscriptionExportError as exc:
        if debug:
            traceback.print_exc()
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except sa.exc.SQLAlchemyError as exc:
        if debug:
            traceback.print_exc()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        err_console.print(f"[red]database error:[/red] {reason}", highlight=False)
        sys.exit(2)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        err_console.print(
            f"[red]unexpected error:[/red] {type(exc).__name__}: {exc} (rerun with --debug)",
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
