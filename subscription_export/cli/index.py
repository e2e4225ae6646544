"""The commands of `subscription-export`, each imported only when it runs.

Each command (or command group) is a module of this package with its own `app` and ordinary
module-level imports. `--help` lists the commands from the summaries below without importing
any of them: SQLAlchemy alone is half of `--help`'s start-up, pyarrow and Dagster much more.
`subscription_export_tests/cli/test_index.py` checks each summary against the command's help.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import typer.main
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class Entry:
    module: str  # under subscription_export.cli, holding `app`
    summary: str  # the command's docstring or the group's help, as `--help` lists it
    group: bool = False  # `app` is a command group (even with one command, like `sandbox`)


# In the order `--help` lists them.
COMMANDS: Mapping[str, Entry] = {
    "init": Entry(
        "init",
        "Install capture on the configured tables (idempotent; re-run on table/column changes).",
    ),
    "snapshot": Entry(
        "snapshot",
        "Copy the rows a captured table holds into the stream as op 'r' (online, resumable).",
    ),
    "run": Entry(
        "run",
        "One whole cycle: export and deliver new windows through Dagster, then reconcile.",
    ),
    "reconcile": Entry(
        "reconcile",
        "Bring ERP and CRM edits back and send the pushes that are due (exit 1 on a failure).",
    ),
    "status": Entry("status", "Watermark and lag per consumer, pending changes, recent windows."),
    "export": Entry(
        "export",
        "Export any LSN range to one file (no watermark moves); same bytes as the window files.",
    ),
    "demo": Entry(
        "demo", "Seed a sandbox source, export everything through Dagster, print what happened."
    ),
    "verify": Entry(
        "verify", "Re-hash every exported file against its manifest; exit 1 on any drift."
    ),
    "bench": Entry(
        "bench",
        "Export one window of N generated changes to all formats; write bench/results/*.json.",
    ),
    "dashboard": Entry(
        "dashboard",
        "Export metrics as an offline HTML dashboard (--out FILE) or a live page (--serve).",
    ),
    "watermarks": Entry(
        "watermarks",
        "Watermark per consumer: list them, or migrate them between the state DB and Redis.",
        group=True,
    ),
    "quarantine": Entry("quarantine", "Rows that could not be exported.", group=True),
    "dead-letters": Entry(
        "dead_letters", "Changes a destination did not accept (see destinations.toml).", group=True
    ),
    "conflicts": Entry(
        "conflicts",
        "Bidirectional sync: conflicts queued for a person, and every sync decision.",
        group=True,
    ),
    "sandbox": Entry("sandbox", "Mock ERP, CRM and accounting systems.", group=True),
}


def load_command(name: str) -> TyperCommand | TyperGroup:
    """The command (or group) `name` as click runs it, its module imported now."""
    entry = COMMANDS[name]
    module = importlib.import_module(f"subscription_export.cli.{entry.module}")
    if entry.group:
        return typer.main.get_group(module.app)
    return cast(TyperCommand, typer.main.get_command(module.app))


class LazyCommands(TyperGroup):
    """The root group: lists every command from `COMMANDS` and imports a command's module only
    when that command is invoked (its own `--help` included)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        # Placeholders carry what the listing and the "did you mean" suggestions need.
        for name, entry in COMMANDS.items():
            self.commands.setdefault(name, TyperCommand(name=name, help=entry.summary))
        self._loaded: set[str] = set()

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name = args[0] if args else None
        if name in COMMANDS and name not in self._loaded:
            self.commands[name] = load_command(name)
            self._loaded.add(name)
        return super().resolve_command(ctx, args)
