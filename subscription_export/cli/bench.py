"""`bench`: export one window of N generated changes to every format and record the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from subscription_export.bench import BENCH_STAGES, run_bench
from subscription_export.cli.app import console
from subscription_export.cli.progress import progress_bar

app = typer.Typer(add_completion=False)


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
    if source not in ("sqlite", "postgresql"):
        raise typer.BadParameter("--source is sqlite or postgresql")
    stages = [s for s in BENCH_STAGES if not (skip_pandas and s == "pandas")]
    with progress_bar(quiet or as_json) as progress:
        task = progress.add_task("benchmark", total=len(stages))

        def on_stage(stage: str) -> None:
            progress.update(task, completed=stages.index(stage), description=f"bench: {stage}")

        report = run_bench(changes, source, workdir, results, pg_url, skip_pandas, on_stage)
        progress.update(task, completed=len(stages))
    if as_json:
        console.print_json(json.dumps(report))
    else:
        _print_bench(report, changes, source)


def _print_bench(report: dict[str, Any], changes: int, source: str) -> None:
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
        f" incremental 10k {report['incremental_10k_s']} s (median of"
        f" {len(report['incremental_10k_runs_s'])} cycles)"
    )
    console.print(f"written to {report['written_to']}", markup=False)
