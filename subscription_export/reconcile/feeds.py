"""The fetch step: the systems with a change feed (ERP and CRM kinds) and reading their
`GET /changes` feeds from the cursor the reconcile has applied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from subscription_export.delivery.clients import ChangeFeedMixin, DeliveryClient, RemoteChange
from subscription_export.delivery.config import DestinationConfig, DestinationsConfig
from subscription_export.delivery.mapping import (
    CRM_FIELD_NAMES,
    subscription_from_crm,
    subscription_from_erp,
)
from subscription_export.reconcile.errors import ReconcileError
from subscription_export.reconcile.sync_state import get_cursor, init_sync_state, record_requested
from subscription_export.runtime import Project

FEED_KINDS = ("erp", "crm")


# -- systems and feeds -------------------------------------------------------------------------


def feed_systems(destinations: DestinationsConfig) -> list[DestinationConfig]:
    """Destinations whose users edit subscriptions (ERP and CRM kinds have a change feed)."""
    return [d for d in destinations.destinations.values() if d.kind in FEED_KINDS]


def feed_system(destinations: DestinationsConfig, name: str) -> DestinationConfig:
    config = destinations.get(name)
    if config is None or config.kind not in FEED_KINDS:
        known = ", ".join(d.name for d in feed_systems(destinations)) or "none"
        raise ReconcileError(
            f"{name!r} is not a configured system with a change feed in"
            f" {destinations.describe()} (systems with a feed: {known})"
        )
    return config


def _feed(client: DeliveryClient) -> ChangeFeedMixin:
    if not isinstance(client, ChangeFeedMixin):
        raise ReconcileError(f"{client.destination} has no change feed")
    return client


@dataclass(frozen=True)
class FeedBatch:
    """Feed changes with `after < cursor <= until`, oldest first."""

    system: str
    after: int
    until: int
    changes: tuple[RemoteChange, ...]

    @property
    def run_key(self) -> str:
        return f"{self.system}:{self.after}-{self.until}"

    def metadata(self) -> dict[str, int | str]:
        return {
            "system": self.system,
            "cursor_from": self.after,
            "cursor_to": self.until,
            "changes": len(self.changes),
        }


def fetch_batch(
    client: DeliveryClient,
    after: int,
    until: int | None = None,
    *,
    page_size: int = 100,
    max_changes: int = 10_000,
) -> FeedBatch:
    """Read pages after `after` up to `until` (None: what is there, at most `max_changes`)."""
    feed = _feed(client)
    changes: list[RemoteChange] = []
    cursor = after
    while until is None or cursor < until:
        page = feed.fetch_changes(after=cursor, limit=page_size)
        taken = [c for c in page.changes if until is None or c.cursor <= until]
        changes.extend(taken)
        if taken:
            cursor = taken[-1].cursor
        if len(taken) < page_size or len(changes) >= max_changes:
            break
    return FeedBatch(client.destination, after, cursor, tuple(changes))


def applied_cursor(project: Project, system: str) -> int:
    init_sync_state(project.state)
    with project.state.connect() as conn:
        return get_cursor(conn, system).applied


def fetch_changes(
    project: Project,
    config: DestinationConfig,
    until: int | None = None,
    *,
    client: DeliveryClient | None = None,
    page_size: int = 100,
    max_changes: int = 10_000,
) -> FeedBatch:
    """The system's feed changes after its *applied* cursor, up to `until` (None: what is there,
    at most `max_changes`). Starting from the applied cursor, not from the range a run was
    requested for, means a failed run's changes are picked up by the next run."""
    after = applied_cursor(project, config.name)
    if until is not None and after >= until:
        return FeedBatch(config.name, after, after, ())
    if client is not None:
        return fetch_batch(client, after, until, page_size=page_size, max_changes=max_changes)
    with config.client() as own:
        return fetch_batch(own, after, until, page_size=page_size, max_changes=max_changes)


def poll_changes(
    project: Project, config: DestinationConfig, requested: int, page: int
) -> FeedBatch:
    """One page of changes past both the cursor already requested (the sensor's) and the
    applied one; a non-empty page is mirrored to `sync_feed_cursors.requested` for the CLI."""
    after = max(requested, applied_cursor(project, config.name))
    with config.client() as client:
        batch = fetch_batch(client, after, page_size=page, max_changes=page)
    if batch.changes:
        record_requested(project.state, config.name, batch.until)
    return batch


def remote_fields(config: DestinationConfig, change: RemoteChange) -> dict[str, Any]:
    """The feed record as subscription fields (our names, still JSON values)."""
    record = dict(change.record)
    if config.field_mapping:
        built_in = CRM_FIELD_NAMES if config.kind == "crm" else {}
        inverse = {
            theirs: built_in.get(ours, ours) for ours, theirs in config.field_mapping.items()
        }
        extra_key = "custom_fields" if config.kind == "crm" else "extra"
        record = {inverse.get(k, k): v for k, v in record.items()}
        if isinstance(record.get(extra_key), dict):
            record[extra_key] = {inverse.get(k, k): v for k, v in record[extra_key].items()}
    if config.kind == "crm":
        return subscription_from_crm(change.id, record)
    return subscription_from_erp({**record, "id": change.id})
