"""Crash safety: delivering processes are killed with SIGKILL, then delivery is re-run.

Each round appends changes to a real SQLite source and exports the new windows; then three
child processes (forked from a `forkserver` that preloaded the modules, so they start fast) run
side by side, each delivering every window to one sandbox system (ERP, CRM, accounting). The
systems are served by this test process, so their state survives the kills. Each child kills
itself with SIGKILL at a seeded point: just before its N-th HTTP request leaves (other lanes may
be mid-request), just after its N-th answer arrived (applied remotely, not yet recorded
locally), or just after its N-th SQL statement (inside the lease, dead-letter, completion and
watermark bookkeeping, between windows). Then delivery is re-run to completion here, under the
same lease holder, and every system's state must equal the source with every operation applied
exactly once. 8 rounds x 3 systems = 24 kill points. The servers also inject retryable faults
that do not sleep (5xx, 429, resets, lost answers, failing batch items), so the test stays fast.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.context
import os
import random
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from subscription_export.core.settings import Settings
from subscription_export.delivery.config import load_destinations
from subscription_export.delivery.dead_letters import list_dead_letters
from subscription_export.delivery.window import deliver_window
from subscription_export.runtime import Project
from subscription_export.sandbox.faults import FaultPlan, FaultSpec
from subscription_export.sandbox.server import running_sandbox
from subscription_export.state.windows import list_windows

HOLDER = "crash-test-deliverer"
NO_SLEEP_FAULTS = FaultSpec(
    error=0.20,
    error_statuses=(500, 503),
    rate_limit=0.05,
    retry_after_s=1,  # capped by the 20 ms delay cap
    reset=0.02,
    lost_response=0.03,
    item_failure=0.05,
)
ROUNDS = 8  # x 3 systems = 24 kill points
SYSTEMS = ("erp", "crm", "accounting")

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class KillPlan:
    """What one child does: deliver all windows of `destination`, dying at the seeded point."""

    source_url: str
    state_url: str
    export_dir: str
    window_max_changes: int
    destinations_file: str
    destination: str
    mode: str  # before_request | after_response | after_sql
    n: int  # the number of the request or SQL statement at which to die


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _counter(plan: KillPlan, phase: str) -> Any:
    """A thread-safe call counter that kills the process when call `plan.n` is in `phase`."""
    lock = threading.Lock()
    count = 0

    def tick(current: str) -> None:
        nonlocal count
        if current != phase:
            return
        with lock:
            count += 1
            number = count
        if number == plan.n:
            _kill()

    return tick


def _arm(plan: KillPlan) -> None:
    """Install the kill point around HTTP requests or SQL statements."""
    if plan.mode == "after_sql":
        import sqlalchemy as sa
        from sqlalchemy.engine import Engine

        tick = _counter(plan, "sql")

        @sa.event.listens_for(Engine, "after_cursor_execute")
        def _after(*_args: Any) -> None:
            tick("sql")

        return
    from requests.adapters import HTTPAdapter

    original = HTTPAdapter.send
    tick = _counter(plan, plan.mode)

    def send(self: HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
        tick("before_request")
        response = original(self, request, *args, **kwargs)
        tick("after_response")
        return response

    HTTPAdapter.send = send  # type: ignore[method-assign]


def child_main(raw: str) -> None:
    """The child process: deliver every window to one destination, in order."""
    plan = KillPlan(**json.loads(raw))
    settings = Settings(
        source_url=plan.source_url,
        state_url=plan.state_url,
        export_dir=Path(plan.export_dir),
        window_max_changes=plan.window_max_changes,
        window_max_age_s=0.0,
        read_batch_size=16,
    )
    project = Project(settings)
    destination = load_destinations(plan.destinations_file).destinations[plan.destination]
    last = list_windows(project.state)[-1]
    project.source, project.watermarks  # noqa: B018 - connect before the kill point is armed
    _arm(plan)
    deliver_window(project, destination, last, HOLDER, policy="block")  # earlier ones first


_PRELOAD = [
    "subscription_export.export.flow",
    "subscription_export.delivery.window",
    "subscription_export_tests.delivery.test_crash_safety",
    "requests",
]


def _children() -> multiprocessing.context.ForkServerContext:
    """Children forked from a server that imported everything once: each child is its own OS
    process (SIGKILL kills it alone) but starts in milliseconds, not an interpreter start-up."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _kill_point(rng: random.Random, destination: str) -> tuple[str, int]:
    """A seeded kill point inside the round's delivery: every round sends 24+ new changes in
    batches of 4 and runs dozens of SQL statements, more than any N drawn here."""
    mode = rng.choice(["before_request", "after_response", "after_sql"])
    if mode == "after_sql":
        return mode, rng.randrange(1, 40)
    return mode, rng.randrange(1, 12 if destination == "erp" else 5)


def test_sigkill_at_seeded_points_then_rerun_converges_exactly_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    from subscription_export.core.db import engine_for
    from subscription_export.source.demo_table import init_demo_source
    from subscription_export_tests.delivery.test_window_delivery import (
        assert_in_sync,
        export_all,
        write_changes,
        write_destinations,
    )

    init_demo_source(engine_for(sqlite_url, writer=True))
    settings = Settings(
        source_url=sqlite_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_changes=15,
        window_max_age_s=0.0,
        read_batch_size=16,
    )
    project = Project(settings)
    rng = random.Random(20240607)
    context = _children()
    kills: dict[str, list[tuple[str, int]]] = {name: [] for name in SYSTEMS}
    with running_sandbox(faults=FaultPlan(default=NO_SLEEP_FAULTS, seed=41)) as servers:
        config_file = tmp_path / "destinations.toml"
        config = write_destinations(config_file, servers, batch_size=4, read_s=2.0)
        for round_number in range(ROUNDS):
            write_changes(
                settings.source_url,
                seed=round_number,
                subscriptions=4,
                changes=20,
                prefix=f"r{round_number:02d}_",
            )
            windows = export_all(project)
            children = {}
            for destination in SYSTEMS:  # one child per system, running side by side
                mode, n = _kill_point(rng, destination)
                plan = KillPlan(
                    source_url=settings.source_url,
                    state_url=settings.state_url,
                    export_dir=str(settings.export_dir),
                    window_max_changes=settings.window_max_changes,
                    destinations_file=str(config_file),
                    destination=destination,
                    mode=mode,
                    n=n,
                )
                child = context.Process(target=child_main, args=(json.dumps(asdict(plan)),))
                child.start()
                children[destination] = (plan, child)
            for destination, (plan, child) in children.items():
                child.join(timeout=60)
                assert child.exitcode == -signal.SIGKILL, (plan, child.exitcode)
                kills[destination].append((plan.mode, plan.n))

            for destination in SYSTEMS:  # the re-run, to completion (earlier windows first)
                outcome = deliver_window(
                    project, config.destinations[destination], windows[-1], HOLDER, policy="block"
                )
                letters = list_dead_letters(project.state, destination)
                assert outcome.status in ("delivered", "already_delivered"), [
                    (d.lsn, d.error) for d in letters
                ]
                assert project.watermarks.get(destination) == windows[-1].hi
            assert_in_sync(project, servers)

    assert all(len(points) == ROUNDS for points in kills.values()), kills
    assert {mode for points in kills.values() for mode, _ in points} == {
        "before_request",
        "after_response",
        "after_sql",
    }
    lost = sum(s.system.requests_by_status.get("lost_response", 0) for s in servers.values())
    assert lost > 0  # the faults really happened alongside the kills
