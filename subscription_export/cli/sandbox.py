"""`sandbox serve`: one mock ERP, CRM or accounting system in the foreground."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from subscription_export.cli.app import console
from subscription_export.core.errors import ConfigError
from subscription_export.sandbox.faults import FaultPlan
from subscription_export.sandbox.server import SandboxServer
from subscription_export.sandbox.systems import make_system

app = typer.Typer(
    help="Mock ERP, CRM and accounting systems.", no_args_is_help=True, add_completion=False
)


class SandboxSystemName(StrEnum):
    erp = "erp"
    crm = "crm"
    accounting = "accounting"


@app.command("serve")
def sandbox_serve(
    system: Annotated[SandboxSystemName, typer.Option(help="Which system.")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 0,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    faults: Annotated[
        Path | None, typer.Option(help="JSON fault plan (see sandbox/faults.py).")
    ] = None,
) -> None:
    """Serve one sandbox system in the foreground until Ctrl-C."""
    plan = None
    if faults is not None:
        try:
            plan = FaultPlan.from_json(json.loads(faults.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{faults}: not a fault plan ({exc})") from None
    server = SandboxServer(make_system(system.value, faults=plan), host=host, port=port)
    console.print(
        f"sandbox {system.value} listening on {server.url} (Ctrl-C stops it)", markup=False
    )
    server.serve_in_foreground()
