"""The progress bar long-running commands draw on stderr."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from subscription_export.cli.app import err_console


def progress_bar(quiet: bool) -> Progress:
    """A progress bar on stderr, shown only on a terminal and without --quiet."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet or not err_console.is_terminal,
    )
