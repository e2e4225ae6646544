"""Run window exports in-process through Dagster, recorded in the $DAGSTER_HOME instance, so
CLI runs show up in the UI next to sensor and backfill runs."""

import fcntl
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from sqlalchemy.exc import IntegrityError

from subscription_export.core.errors import ConfigError
from subscription_export.core.settings import Settings
from subscription_export.core.stopping import deferred
from subscription_export.defs.definitions import build_definitions
from subscription_export.defs.destinations import SYNC_WINDOW_JOB, DestinationsResource
from subscription_export.defs.failures import RUN_FAILED, run_failures
from subscription_export.defs.instance import ensure_dagster_home
from subscription_export.defs.jobs import EXPORT_WINDOW_JOB
from subscription_export.defs.partitions import cdc_windows
from subscription_export.defs.reconcile import ConflictPoliciesResource
from subscription_export.delivery.outcome import DestinationBlocked
from subscription_export.delivery.window import lagging_window
from subscription_export.export.cut import CutResult, cut_windows, incomplete_windows
from subscription_export.reconcile.feeds import feed_systems
from subscription_export.reconcile.flow import SystemRun, reconcile_all
from subscription_export.runtime import Project
from subscription_export.state.leases import LeaseBusy, default_holder, lease
from subscription_export.state.windows import Window
from subscription_export.status import dead_letter_hold

log = logging.getLogger(__name__)


# The CLI prints its own summary, one line per failed window; Dagster's step lines and failure
# tracebacks stay in the instance (UI, and `run --debug` prints them). With JSON logs
# (SUBSCRIPTION_EXPORT_LOG_FORMAT) stderr then carries only JSON lines.
_QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class WindowRun:
    window: Window
    run_id: str
    success: bool
    error: str | None  # the original cause, one line per failed step
    exit_code: int = 0  # what the CLI exits with for it (defs/failures.py)
    detail: str = ""  # Dagster's error text with stacks, for --debug


@dataclass(frozen=True)
class CycleResult:
    cut: CutResult
    runs: list[WindowRun]
    reconciled: list[SystemRun] = field(default_factory=list)
    # destination -> how open dead letters hold it back (`dead_letter_hold`): checked every
    # cycle, since one with no new window has no delivery step to fail on the block
    held_back: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[WindowRun]:
        return [r for r in self.runs if not r.success]

    @property
    def exit_code(self) -> int:
        """0, else the most demanding failure's code (3: an operator must act; 1: failed)."""
        codes = [r.exit_code for r in self.failed] + [RUN_FAILED for _ in self.reconcile_failed]
        codes += [DestinationBlocked.exit_code for _ in self.held_back]  # an operator must act
        return max(codes, default=0)

    @property
    def reconcile_failed(self) -> list[SystemRun]:
        return [r for r in self.reconciled if r.failed]


def materialize_windows(
    settings: Settings,
    windows: list[Window],
    instance: dg.DagsterInstance | None = None,
    on_done: Callable[[WindowRun], None] | None = None,
    job_name: str = EXPORT_WINDOW_JOB,
    trigger: str = "cli",
    destinations: Path | None = None,
    claim_first: bool = False,
) -> list[WindowRun]:
    """Run `job_name` for each window; `destinations`: the destinations file its sync steps
    use (None: found from the environment). `claim_first` (the cycle): skip a window another
    worker is running or has finished since it was listed."""
    if not windows:
        return []
    if instance is None:
        instance = open_instance()
    job = build_definitions(settings, destinations).resolve_job_def(job_name)
    add_partitions(instance, [w.key for w in windows])
    runs = []
    project = Project(settings)
    for window in windows:
        with ExitStack() as claim:
            if claim_first and not claim.enter_context(_claimed(project, window)):
                continue  # another worker has it, or finished it meanwhile
            with deferred():  # a stop signal ends the run's step, then raises here: no next run
                result = job.execute_in_process(
                    partition_key=window.key,
                    instance=instance,
                    raise_on_error=False,
                    tags={"subscription_export/trigger": trigger},
                    run_config=_QUIET_LOGS,
                )
        run = _window_run(window, result.run_id, result.success, result.all_events)
        runs.append(run)
        if on_done:
            on_done(run)
    return runs


@contextmanager
def _claimed(project: Project, window: Window) -> Iterator[bool]:
    """True while this process holds the window's cycle claim and the window still needs
    exporting: two `run --watch` workers (two nodes) never both export one window. The claim
    is a heartbeat lease, so a killed worker's claim is taken over at once."""
    claim = ExitStack()
    try:
        claim.enter_context(
            lease(
                project.state,
                f"cycle:{window.key}",
                default_holder(),
                wait_s=0,
                ttl_s=project.settings.lease_ttl_s,
            )
        )
    except LeaseBusy:
        yield False
        return
    with claim:
        yield window in incomplete_windows(project)


def _window_run(
    window: Window, run_id: str, success: bool, events: list[dg.DagsterEvent]
) -> WindowRun:
    if success:
        return WindowRun(window, run_id, True, None)
    failures = run_failures(events)
    return WindowRun(
        window,
        run_id,
        False,
        "; ".join(dict.fromkeys(f.message for f in failures)) or "run failed",
        exit_code=max((f.exit_code for f in failures), default=RUN_FAILED),
        detail="\n".join(f.detail for f in failures),
    )


def open_instance() -> dg.DagsterInstance:
    """The $DAGSTER_HOME instance. A file lock keeps two CLI processes from creating a fresh
    instance's SQLite tables at the same moment."""
    home = ensure_dagster_home()
    with (home / ".subscription_export.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return dg.DagsterInstance.get()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add_partitions(instance: dg.DagsterInstance, keys: list[str]) -> None:
    """Add missing window partitions; another process adding the same key is fine."""
    for _attempt in range(3):
        known = set(instance.get_dynamic_partitions(cdc_windows.name))
        missing = [k for k in keys if k not in known]
        if not missing:
            return
        try:
            instance.add_dynamic_partitions(cdc_windows.name, missing)
            return
        except IntegrityError:
            continue  # a concurrent run registered some of them; look again


def run_cycle(
    settings: Settings,
    instance: dg.DagsterInstance | None = None,
    on_done: Callable[[WindowRun], None] | None = None,
    destinations: Path | None = None,
) -> CycleResult:
    """One whole cycle: sequence, cut due windows, export and deliver every window not yet
    fully exported (and catch up a destination left behind), then reconcile every system with
    a change feed: bring its users' edits back and send the pending pushes that are due.
    `destinations`: the destinations file to deliver with (None: found from the environment)."""
    project = Project(settings)
    cut = cut_windows(project)
    todo = incomplete_windows(project)
    runs = materialize_windows(
        settings, todo, instance, on_done, destinations=destinations, claim_first=True
    )
    behind = destination_catch_up(project, destinations)
    if behind is not None and behind not in todo:
        runs += materialize_windows(
            settings,
            [behind],
            instance,
            on_done,
            SYNC_WINDOW_JOB,
            trigger="cli-catch-up",
            destinations=destinations,
        )
    reconciled = reconcile_systems(project, destinations)
    return CycleResult(cut, runs, reconciled, held_back(project, destinations))


def held_back(project: Project, destinations: Path | None = None) -> dict[str, str]:
    """Configured destinations that open dead letters hold back, with why (an unloadable
    destinations file is reported by the reconcile step)."""
    try:
        config = DestinationsResource.at(destinations).load()
    except ConfigError:
        return {}
    holds = {name: dead_letter_hold(project, name) for name in config.destinations}
    return {name: why for name, why in holds.items() if why is not None}


def reconcile_systems(project: Project, destinations: Path | None = None) -> list[SystemRun]:
    """The cycle's reconcile step (every system with a feed); nothing without a destinations
    file. A destinations file or conflict policy that does not load is a failed reconcile,
    not a warning: a cycle without a new window (no sync step to fail on it) would otherwise
    exit 0 while no system's edits come back."""
    try:
        config = DestinationsResource.at(destinations).load()
    except ConfigError as exc:
        return [SystemRun("destinations", None, f"{type(exc).__name__}: {exc}")]
    try:
        policies = ConflictPoliciesResource.from_env().load()
    except ConfigError as exc:
        error = f"{type(exc).__name__}: {exc}"
        return [SystemRun(system.name, None, error) for system in feed_systems(config)]
    return reconcile_all(project, config, policies)


def destination_catch_up(project: Project, destinations: Path | None = None) -> Window | None:
    """A window to re-run `sync_window` for, when a destination fell behind the exports (a
    failure that outlasted its retries) and no new window would otherwise catch it up."""
    try:
        config = DestinationsResource.at(destinations).load()
    except ConfigError as exc:
        # The export runs' sync steps fail on it too; with no new window, say it here.
        log.warning("destinations not caught up: %s", exc)
        return None
    return lagging_window(project, list(config.destinations.values()))
