"""Replay a destination's dead letters, then complete and catch up the windows they held back.

Policy `block` keeps a window with an open dead letter from completing, so the destination's
watermark waits before it. A replay re-sends each dead letter with its original idempotency
keys; a window left with no open dead letter is completed (its other changes were delivered by
the pass that recorded the dead letters), and the windows that waited behind it are delivered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from subscription_export.core.errors import SubscriptionExportError
from subscription_export.delivery.clients import DeliveryClient
from subscription_export.delivery.config import DestinationConfig, DestinationsConfig
from subscription_export.delivery.dead_letters import (
    PUSH_WINDOW_KEY,
    Policy,
    ReplayResult,
    dead_letter_policy,
    init_dead_letters,
    open_windows,
    replay,
)
from subscription_export.delivery.one_window import completion, window_parquet
from subscription_export.delivery.ordering import catch_up
from subscription_export.delivery.outcome import DeliveryOrderError, WindowDeliveryOutcome
from subscription_export.formats.storage import parquet_rows
from subscription_export.runtime import Project
from subscription_export.state.leases import lease
from subscription_export.state.progress import advance, completed_keys, record_completed
from subscription_export.state.windows import find_window


class DestinationConfigMissing(SubscriptionExportError):
    """Dead letters exist for a destination the configuration no longer declares."""


@dataclass(frozen=True)
class ReplaySummary:
    results: list[ReplayResult]
    completed_windows: list[tuple[str, str]]  # (destination, window key) completed by the replay
    caught_up: list[WindowDeliveryOutcome]  # windows delivered after the replay unblocked them
    watermarks: dict[str, int]

    @property
    def replayed(self) -> int:
        return sum(r.replayed for r in self.results)

    @property
    def failed(self) -> int:
        return sum(not r.replayed for r in self.results)


def replay_dead_letters(
    project: Project,
    destinations: DestinationsConfig,
    holder: str,
    *,
    destination: str | None = None,
    ids: Sequence[int] | None = None,
    policy: Policy | None = None,
    on_result: Callable[[ReplayResult], None] | None = None,
) -> ReplaySummary:
    """Replay open dead letters with their original keys, complete the windows that have no
    open dead letter left, then deliver the windows that waited behind them."""
    chosen = policy or dead_letter_policy()
    state = project.state
    init_dead_letters(state)
    clients: dict[str, DeliveryClient] = {}

    def client_for(name: str) -> DeliveryClient:
        if name not in clients:
            config = destinations.get(name)
            if config is None:
                raise DestinationConfigMissing(
                    f"dead letters of {name!r} cannot be replayed: {name} is not configured in"
                    f" {destinations.describe()}"
                )
            clients[name] = config.client()
        return clients[name]

    try:
        results = replay(state, client_for, destination=destination, ids=ids, on_result=on_result)
        touched = sorted({(r.letter.destination, r.letter.window_key) for r in results})
        completed = [
            (name, key)
            for name, key in touched
            if _finish_replayed_window(project, destinations.destinations[name], key, holder)
        ]
        names = sorted({name for name, _ in touched})
        caught_up: list[WindowDeliveryOutcome] = []
        for name in names:
            config = destinations.destinations[name]
            caught_up.extend(
                catch_up(project, config, holder, policy=chosen, client=client_for(name))
            )
        watermarks = {name: project.watermarks.get(name) for name in names}
        return ReplaySummary(results, completed, caught_up, watermarks)
    finally:
        for client in clients.values():
            client.close()


def _finish_replayed_window(
    project: Project, config: DestinationConfig, window_key: str, holder: str
) -> bool:
    """Complete a window for the destination once it has no open dead letter (its other
    changes were delivered by the pass that recorded the dead letters). True if it was
    completed now."""
    name, state = config.name, project.state
    if window_key == PUSH_WINDOW_KEY or open_windows(state, name).get(window_key, 0):
        return False  # a push's dead letter belongs to no window
    window = find_window(state, window_key)
    if window is None:
        raise DeliveryOrderError(f"{name}: dead letters name window {window_key}, not registered")
    settings = project.settings
    with lease(
        state, f"{name}:{window_key}", holder, settings.lease_wait_s, settings.lease_ttl_s
    ) as held:
        if window_key in completed_keys(state, name, window.lo - 1):
            advance(project.watermarks, state, name)
            return False
        parquet = window_parquet(project, window_key, config)
        rows = parquet_rows(parquet)
        held.check()
        record_completed(state, completion(name, window, parquet, rows))
        advance(project.watermarks, state, name)
    return True
