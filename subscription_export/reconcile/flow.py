"""Bring edits made in the ERP and the CRM back into the source, three ways, without echo.

The steps are plain functions, one module each; `reconcile_system` runs them for one system
and each op of the Dagster job (`defs/reconcile.py`) calls exactly one of them:

1. **Fetch** (`feeds.fetch_changes`): the system's change feed after the applied cursor.
2. **Snapshot** (`snapshot.load_snapshots`, I/O, no writes): per change the sync base, the
   local row and what the remote holds now (the job reports it; `reconcile_system` skips it).
3. **Decide** (`three_way.decide`/`plan`, pure): the three-way merge of `conflicts` with the
   destination's policy (`policies`, `strategies`), each conflicting field decided by the
   *provenance* of the local value (see below).
4. **Apply** (`apply.apply_batch`): in rounds of changes of distinct subscriptions, load
   set-based (`reads.BatchReads`) and decide again under the source rows' locks, write the
   merged records back tagged with the system as origin (`source_batch`), and record the
   decisions (`record_batch`/`record.py`: sync base, provenance, audit entry, pending push or
   queued conflict) in the same transaction when the state database is the source database
   (docs/architecture.md, "Reconcile in batches"). `manual_queue` settles a queued conflict
   through the same decide and record functions, one record at a time.
5. **Push** (`pushes.push_pending`) the pending merged records under fixed idempotency keys.
6. **Advance** (`advance` here) the system's applied feed cursor (only now: the batch is
   applied) and record the outcome counts in the metrics store.

Tables: `sync_state` (queries in `sync_state`, `sync_bases`, `outbox`, `audit_log`).

Why the base is found by `version`: the sandbox systems keep the `version` our last write gave
a record when their users edit it, so a feed record's version names the image it was edited
from - the system's previous edit of that image (`sync_base.feed_*`), the record we pushed
(`sync_base.held_*`) or an image in the change log (delivered by the window delivery).
Using that image as the base keeps the three-way merge exact even when the window delivery or
a push overwrote the remote after its user's edit.

Why pushes wait: the window delivery sends the source's changes to each system in LSN order,
and the ERP refuses a version older than the one it holds. A push of a merged record (which
carries the write-back's newer version) sent before the delivery of an earlier change would
turn that change into a stale-version dead letter. So a push waits until the system's delivery
watermark has passed every earlier non-echo change of the subscription, and is dropped as
obsolete when the delivery has since brought the remote a newer image (built on the merged
record). The write-back itself is never delivered to its system (`_origin` = system).

Why provenance: `last_writer_wins` on the record's latest time, `source_wins` and
`field_ownership` are order dependent with three systems (a value the ERP wrote into the source
would later be defended as "the source's" against the CRM). Each field value the reconcile
writes back records the system and UTC time that produced it; a conflict is decided between
that system/time and the remote's, and between two remotes `source_wins`/`remote_wins` fall back
to `last_writer_wins`. App edits get their time from the change log (`updated_at` of the
change that last touched the field). docs/conflicts.md has the rules.

Crash windows: when the state database is another database than the source, the write-back
commits first and the sync base, audit entry and push are written right after. A crash between
the two re-reads the same feed change (its cursor was not recorded as applied): the local row
already holds the merged record, and the three-way merge of (old base, merged, remote) gives the
merged record again, so nothing is written twice and the push gets the same key. Between the
state write and the push, the pending push is re-sent under its key.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from subscription_export.core.errors import SubscriptionExportError
from subscription_export.delivery.clients import DeliveryClient
from subscription_export.delivery.config import DestinationConfig, DestinationsConfig
from subscription_export.delivery.retry import DeliveryError
from subscription_export.metrics.store import ReconcileMetrics, record_reconcile_metrics
from subscription_export.reconcile.apply import ApplyReport, apply_batch
from subscription_export.reconcile.errors import ReconcileError
from subscription_export.reconcile.feeds import feed_system, feed_systems, fetch_changes

# Kept for cli.py until its `conflicts` commands import them from `manual_queue` (the CLI is
# being split into a package; see the reconcile branch's report).
from subscription_export.reconcile.manual_queue import (
    describe_conflict,
    history,
    resolve_conflict,
)
from subscription_export.reconcile.policies import ConflictPolicies
from subscription_export.reconcile.pushes import PushReport, push_pending
from subscription_export.reconcile.source_side import destination_types
from subscription_export.reconcile.strategies import ConflictPolicy
from subscription_export.reconcile.sync_state import advance_applied, init_sync_state
from subscription_export.runtime import Project

__all__ = [
    "ReconcileError",
    "ReconcileReport",
    "SystemRun",
    "advance",
    "describe_conflict",
    "history",
    "reconcile_all",
    "reconcile_system",
    "resolve_conflict",
]


@dataclass(frozen=True)
class ReconcileReport:
    applied: ApplyReport
    pushes: PushReport
    cursor: int

    def metadata(self) -> dict[str, int | str]:
        return {**self.applied.metadata(), **self.pushes.metadata(), "applied_cursor": self.cursor}

    @property
    def failed(self) -> bool:
        """A push was refused this run (kept for the next, or now a dead letter)."""
        return bool(self.pushes.failed or self.pushes.dead_lettered)

    def summary(self) -> dict[str, Any]:
        """What `subscription-export reconcile` prints per system (`invalid_changes`: the
        changes set aside as `invalid`, each its cursor, escaped id and reason)."""
        return {
            "system": self.applied.system,
            "changes": sum(self.applied.outcomes.values()),
            "applied": self.applied.written_back,
            "conflicts_queued": self.applied.outcomes.get("queued", 0),
            "invalid": self.applied.outcomes.get("invalid", 0),
            "invalid_changes": self.applied.invalid,
            "pushes_sent": self.pushes.pushed,
            "pushes_waiting": self.pushes.deferred,
            "pushes_failed": self.pushes.failed,
            "pushes_dead_lettered": self.pushes.dead_lettered,
            "feed_cursor": self.cursor,
        }


def reconcile_system(
    project: Project,
    config: DestinationConfig,
    policy: ConflictPolicy,
    *,
    until: int | None = None,
    holder: str | None = None,
    client: DeliveryClient | None = None,
    page_size: int = 100,
    max_changes: int = 10_000,
) -> ReconcileReport:
    """Fetch (at most `max_changes`), decide, apply, push and advance the cursor of one system."""
    init_sync_state(project.state)
    types = destination_types(project, config)  # table and columns fit, before any feed read
    own = client is None
    active = client or config.client()
    try:
        batch = fetch_changes(
            project, config, until, client=active, page_size=page_size, max_changes=max_changes
        )
        applied = apply_batch(project, config, batch, policy, holder=holder, types=types)
        pushes = push_pending(project, config, client=active)
    finally:
        if own:
            active.close()
    return advance(project, applied, pushes)


@dataclass(frozen=True)
class SystemRun:
    """One system's reconcile in `reconcile_all`: its report, or why it could not run."""

    system: str
    report: ReconcileReport | None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.report is None or self.report.failed

    def summary(self) -> dict[str, Any]:
        if self.report is None:
            return {"system": self.system, "error": self.error}
        return {**self.report.summary(), "errors": "; ".join(self.report.pushes.errors) or None}


def reconcile_all(
    project: Project,
    destinations: DestinationsConfig,
    policies: ConflictPolicies,
    *,
    system: str | None = None,
    holder: str | None = None,
) -> list[SystemRun]:
    """`reconcile_system` for every system with a change feed (or the one named), each on its
    own: one unreachable system does not keep the others from their edits and pushes. What
    the CLI's `reconcile` and `run --once` do after the delivery."""
    configs = [feed_system(destinations, system)] if system else feed_systems(destinations)
    runs = []
    for config in configs:
        try:
            policy = policies.for_destination(config.name)
            report = reconcile_system(project, config, policy, holder=holder)
        except (SubscriptionExportError, DeliveryError) as exc:
            runs.append(SystemRun(config.name, None, f"{type(exc).__name__}: {exc}"))
            continue
        runs.append(SystemRun(config.name, report))
    return runs


def advance(project: Project, applied: ApplyReport, pushes: PushReport) -> ReconcileReport:
    """Move the system's applied feed cursor past the batch (never back) and record its
    outcome counts in the metrics store (dashboard: remote edits by outcome)."""
    cursor = advance_applied(project.state, applied.system, applied.until)
    record_reconcile_metrics(
        project.state,
        ReconcileMetrics(
            system=applied.system,
            cursor_from=applied.after,
            cursor_to=applied.until,
            outcomes=dict(applied.outcomes),
            written_back=applied.written_back,
            pushed=pushes.pushed,
            finished_at=dt.datetime.now(dt.UTC),
        ),
    )
    return ReconcileReport(applied, pushes, cursor)
