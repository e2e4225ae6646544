"""What `subscription-export demo` needs from the sandbox: how many changes to write, and a
destinations file pointing the sync at the sandbox systems it started."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.sandbox.server import SandboxServer, running_sandbox

DESTINATIONS_FILE = "demo_destinations.toml"
# Later runs create one new subscription per this many changes, so updates dominate.
_CHANGES_PER_NEW_SUBSCRIPTION = 20


@dataclass(frozen=True)
class DemoPlan:
    """What the generator writes on this run of the demo."""

    subscriptions: int
    changes: int


def plan_changes(source: Engine, subscriptions: int, changes: int, more_changes: int) -> DemoPlan:
    """A fresh source (empty change log) gets `changes` over `subscriptions` subscriptions; a
    source that already has changes gets `more_changes` on top of what is there."""
    with source.connect() as conn:
        existing = conn.execute(
            sa.select(sa.func.count()).select_from(sa.table("subscription_change_log"))
        ).scalar_one()
    if existing == 0:
        return DemoPlan(subscriptions, changes)
    return DemoPlan(max(1, more_changes // _CHANGES_PER_NEW_SUBSCRIPTION), more_changes)


def destinations_file_for(state_url: str) -> Path:
    """The demo's destinations file lives next to the SQLite state database."""
    return Path(state_url.removeprefix("sqlite:///")).with_name(DESTINATIONS_FILE)


def write_destinations(servers: Mapping[str, SandboxServer], path: Path) -> Path:
    """A destinations file (see destinations.example.toml) declaring each running sandbox
    system under its own name; it is only valid while those servers run."""
    path.write_text(
        "".join(
            f'[destinations.{name}]\nbase_url = "{server.url}"\nmax_concurrency = 8\n'
            for name, server in servers.items()
        )
    )
    return path


@contextmanager
def running_destinations(path: Path) -> Iterator[tuple[dict[str, SandboxServer], Path]]:
    """Start every sandbox system and write the destinations file `path` pointing at them; the
    systems, and so the file, serve only inside the block."""
    with running_sandbox() as servers:
        yield servers, write_destinations(servers, path)
