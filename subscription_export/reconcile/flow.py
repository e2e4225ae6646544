"""Bring edits made in the ERP and the CRM back into the source, three ways, without echo.

One reconcile of a system (`reconcile_system`, or the Dagster ops in `defs/reconcile.py`):

1. **Fetch** its change feed after the applied cursor (`feeds.fetch_batch`).
2. **Load** for each change, under the source row's lock: the sync base, the local row, and
   what the remote holds now (`three_way.load_snapshot`, reading through `source_side`).
3. **Decide** (`three_way.decide`, pure): the three-way merge of `conflicts` with the
   destination's policy (`policies`), each conflicting field decided by the *provenance* of the
   local value (see below).
4. **Apply** (`apply.apply_batch`): write the merged record back to the source tagged with the
   system as origin (`set_origin`), and in the same transaction - when the state database is
   the source database - the new sync base, the field provenance, the audit entry and, if the
   remote needs the merged record, a pending push. A manual conflict is queued instead
   (`manual_queue` settles it later through the same apply path).
5. **Push** (`pushes.push_pending`) the pending merged records under fixed idempotency keys.
6. **Advance** the system's applied feed cursor (only now: the batch is applied).

This module runs the steps for one system and re-exports the names the Dagster layer, the CLI
and the tests use, so they import one module (`from subscription_export.reconcile import flow
as rc`). Tables: `sync_state`.

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

from subscription_export.core.errors import ConfigError
from subscription_export.delivery.clients import DeliveryClient
from subscription_export.delivery.config import DestinationConfig
from subscription_export.metrics.store import ReconcileMetrics, record_reconcile_metrics
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.apply import (
    CRASH_ENV,
    CRASH_EXIT,
    ApplyReport,
    apply_batch,
    load_snapshots,
)
from subscription_export.reconcile.feeds import (
    FeedBatch,
    ReconcileError,
    feed_system,
    feed_systems,
    fetch_batch,
)
from subscription_export.reconcile.manual_queue import describe_conflict, history, resolve_conflict
from subscription_export.reconcile.policies import (
    ENV_POLICY_FILE,
    ENV_STRATEGY,
    ConflictPolicies,
    load_policies,
)
from subscription_export.reconcile.pushes import PushReport, push_pending
from subscription_export.reconcile.source_side import column_types, normalize
from subscription_export.reconcile.strategies import ConflictPolicy
from subscription_export.reconcile.three_way import OUTCOMES, Snapshot, Verdict, decide
from subscription_export.runtime import Project

__all__ = [
    "CRASH_ENV",
    "CRASH_EXIT",
    "ENV_POLICY_FILE",
    "ENV_STRATEGY",
    "OUTCOMES",
    "ApplyReport",
    "ConfigError",
    "ConflictPolicies",
    "ConflictPolicy",
    "FeedBatch",
    "PushReport",
    "ReconcileError",
    "ReconcileReport",
    "Snapshot",
    "Verdict",
    "apply_batch",
    "column_types",
    "decide",
    "describe_conflict",
    "feed_system",
    "feed_systems",
    "fetch_batch",
    "history",
    "load_policies",
    "load_snapshots",
    "normalize",
    "push_pending",
    "reconcile_system",
    "record_metrics",
    "resolve_conflict",
]


@dataclass(frozen=True)
class ReconcileReport:
    applied: ApplyReport
    pushes: PushReport
    cursor: int

    def metadata(self) -> dict[str, int | str]:
        return {**self.applied.metadata(), **self.pushes.metadata(), "applied_cursor": self.cursor}


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
    st.init_sync_state(project.state)
    own = client is None
    active = client or config.client()
    try:
        with project.state.connect() as conn:
            after = st.get_cursor(conn, config.name).applied
        batch = fetch_batch(active, after, until, page_size=page_size, max_changes=max_changes)
        applied = apply_batch(project, config, batch, policy, holder=holder)
        pushes = push_pending(project, config, client=active)
        cursor = st.advance_applied(project.state, config.name, batch.until)
        record_metrics(project, applied, pushes)
    finally:
        if own:
            active.close()
    return ReconcileReport(applied, pushes, cursor)


def record_metrics(project: Project, applied: ApplyReport, pushes: PushReport) -> None:
    """The reconcile's outcome counts in the metrics store (dashboard: remote edits by outcome)."""
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
