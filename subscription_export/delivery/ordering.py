"""Windows reach a destination strictly in LSN order: catch up on earlier ones first.

The ERP and CRM refuse a version older than the one they hold, so delivering window 2 before
window 1 would turn window 1's good changes into stale-version dead letters. Before its own
window, a call therefore delivers every earlier window the destination has not completed,
waiting up to `wait_s` for one whose Parquet export has not finished yet (its run is probably
in flight; then `DeliveryOrderError`, which Dagster's step retry repeats). Under policy `block`
a window with an open dead letter stops everything after it (`DestinationBlocked`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

from subscription_export.core.stopping import stoppable_sleep
from subscription_export.delivery.clients import DeliveryClient
from subscription_export.delivery.columns import destination_table
from subscription_export.delivery.config import DestinationConfig
from subscription_export.delivery.dead_letters import (
    PUSH_WINDOW_KEY,
    Policy,
    blocked_reason,
    dead_letter_policy,
    init_dead_letters,
    open_windows,
)
from subscription_export.delivery.one_window import deliver_one
from subscription_export.delivery.outcome import (
    DeliveryOrderError,
    DestinationBlocked,
    WindowDeliveryOutcome,
)
from subscription_export.runtime import Project
from subscription_export.state.progress import completed_keys
from subscription_export.state.windows import Window, list_windows

PARQUET_CONSUMER = "parquet"  # the default table's; a destination reads its table's (below)


def parquet_consumer(project: Project, destination: DestinationConfig) -> str:
    """The consumer whose completed windows say the destination's table is exported."""
    return project.dataset_of(destination_table(project, destination)).consumer("parquet")


def pending_windows(
    project: Project, destination: str, before: Window | None = None
) -> list[Window]:
    """Registered windows past the destination's watermark it has not completed, in order
    (only those ending before `before`, if given)."""
    watermark = project.watermarks.get(destination)
    done = completed_keys(project.state, destination, watermark)
    return [
        w
        for w in list_windows(project.state, after_hi=watermark)
        if w.key not in done and (before is None or w.hi < before.lo)
    ]


def _exported(project: Project, destination: DestinationConfig, window: Window) -> bool:
    consumer = parquet_consumer(project, destination)
    return window.key in completed_keys(project.state, consumer, window.lo - 1)


def _deliver_in_order(
    project: Project,
    destination: DestinationConfig,
    holder: str,
    policy: Policy,
    client: DeliveryClient,
    before: Window | None,
    wait_s: float,
    poll_s: float,
) -> list[WindowDeliveryOutcome]:
    """Deliver pending windows (before `before`, or all exported ones) oldest first.

    With `before`, every earlier window must get delivered, so a window not exported yet is
    waited for (`DeliveryOrderError` after `wait_s`) and a blocked one raises
    `DestinationBlocked`; without it (catch-up), delivery stops at the first window that is
    blocked or not exported yet.
    """
    name = destination.name
    outcomes: list[WindowDeliveryOutcome] = []
    deadline = time.monotonic() + wait_s
    while pending := pending_windows(project, name, before):
        first = pending[0]
        blocking = open_windows(project.state, name).get(first.key, 0)
        if policy == "block" and blocking:
            if before is None:
                break
            raise DestinationBlocked(blocked_reason(project.state, name, first.key, blocking))
        if not _exported(project, destination, first):
            if before is None:
                break
            if time.monotonic() >= deadline:
                raise DeliveryOrderError(
                    f"{name}: window {first.key} must be delivered before {before.key} but has"
                    f" not been exported yet (waited {wait_s:g}s); it is delivered when it is"
                )
            stoppable_sleep(poll_s)
            continue
        outcome = deliver_one(project, destination, first, holder, policy, client)
        outcomes.append(outcome)
        if outcome.status == "blocked":
            if before is None:
                break
            raise DestinationBlocked(
                blocked_reason(project.state, name, first.key, outcome.open_dead_letters)
            )
    return outcomes


@contextlib.contextmanager
def _client(
    destination: DestinationConfig, given: DeliveryClient | None
) -> Iterator[DeliveryClient]:
    """The client passed in (left open), or one built for the destination (closed after)."""
    if given is not None:
        yield given
        return
    with destination.client() as built:
        yield built


def deliver_window(
    project: Project,
    destination: DestinationConfig,
    window: Window,
    holder: str,
    *,
    policy: Policy | None = None,
    client: DeliveryClient | None = None,
    wait_s: float | None = None,
    poll_s: float = 0.5,
) -> WindowDeliveryOutcome:
    """Deliver `window` (and, first, any earlier window the destination still lacks).

    Returns the outcome of `window` itself (status `blocked` when it has open dead letters under
    policy `block`). Raises `DestinationBlocked` when an earlier window is blocked, and
    `DeliveryOrderError` when an earlier window is not exported within `wait_s` (default: the
    settings' `lease_wait_s`). A client passed in is left open; one built here is closed.
    """
    chosen = policy or dead_letter_policy()
    init_dead_letters(project.state)
    wait = project.settings.lease_wait_s if wait_s is None else wait_s
    with _client(destination, client) as active:
        earlier = _deliver_in_order(
            project, destination, holder, chosen, active, window, wait_s=wait, poll_s=poll_s
        )
        outcome = deliver_one(project, destination, window, holder, chosen, active)
        return replace(outcome, caught_up=tuple(o.window.key for o in earlier))


def catch_up(
    project: Project,
    destination: DestinationConfig,
    holder: str,
    *,
    policy: Policy | None = None,
    client: DeliveryClient | None = None,
) -> list[WindowDeliveryOutcome]:
    """Deliver every exported window the destination lacks, oldest first; stop at the first
    window that is blocked or not exported yet. Used after a replay unblocks a destination."""
    chosen = policy or dead_letter_policy()
    init_dead_letters(project.state)
    with _client(destination, client) as active:
        return _deliver_in_order(
            project, destination, holder, chosen, active, None, wait_s=0.0, poll_s=0.0
        )


def lagging_window(project: Project, destinations: Sequence[DestinationConfig]) -> Window | None:
    """The newest exported window some destination has not completed, or None.

    "Exported" is asked of each destination's own table (its Parquet consumer), as delivery
    asks it. Delivering the window delivers every earlier window the destination lacks first
    (in order), so one run catches a destination up after a failure outlasted its retries. A
    destination with open dead letters is skipped: it is blocked until an operator replays
    or discards them.
    """
    newest: Window | None = None
    for destination in destinations:
        name = destination.name
        if set(open_windows(project.state, name)) - {PUSH_WINDOW_KEY}:
            continue
        since = project.watermarks.get(name)
        consumer = parquet_consumer(project, destination)
        exported = set(completed_keys(project.state, consumer, since))
        behind = [w for w in pending_windows(project, name) if w.key in exported]
        if behind and (newest is None or behind[-1].hi > newest.hi):
            newest = behind[-1]
    return newest
