"""The `reconcile` job (ops) and `external_changes_sensor`: edits made in the ERP and the CRM
come back into the source (the work is in `sync.reconcile`; this module wires it into Dagster).

One run reconciles one system over a cursor range of its change feed:

    fetch_remote_changes -> load_sync_states -> resolve_changes -> apply_resolutions
        -> push_to_remote -> advance_feed_cursor

`load_sync_states` and `resolve_changes` show what the run plans (decided without locks);
`apply_resolutions` decides again under each source row's lock and is authoritative (a later
change of the same subscription must see the write-back of an earlier one). Every op reports
counts per outcome in its output metadata, and the last op copies them to run tags, so the
runs list shows them without opening a run.

The sensor keeps one feed cursor per system in its cursor (JSON `{"crm": 3, "erp": 12}`) and
mirrors it to the state database (`sync_feed_cursors.requested`) for the CLI. A run starts from
the cursor the previous runs have *applied* (`sync_feed_cursors.applied`), not from the range
it was requested for, so a failed run's changes are picked up by the next run of the system;
a change applied twice is recognized by its cursor and skipped.
"""

import json
import os

import dagster as dg

from subscription_export.defs.assets import STEP_RETRY
from subscription_export.defs.destinations import DestinationsResource
from subscription_export.defs.resources import ExportSettings
from subscription_export.reconcile import flow as rc
from subscription_export.reconcile import sync_state as st
from subscription_export.state.leases import default_holder

RECONCILE_JOB = "reconcile"
SENSOR_PAGE = 100
SYSTEM_TAG = "subscription_export/system"


class ConflictPoliciesResource(dg.ConfigurableResource):
    """Where the conflict policies come from (read in the run's process, at each step).

    `path`: a TOML file (None: $SUBSCRIPTION_EXPORT_CONFLICTS); `strategy`: the default
    strategy when the file has no [default] table (None: $SUBSCRIPTION_EXPORT_CONFLICT_STRATEGY,
    else last_writer_wins).
    """

    path: str | None = None
    strategy: str | None = None

    @classmethod
    def from_env(cls) -> "ConflictPoliciesResource":
        raw = os.environ.get(rc.ENV_POLICY_FILE)
        return cls(path=os.path.abspath(raw) if raw else None)

    def load(self) -> rc.ConflictPolicies:
        env = dict(os.environ)
        if self.strategy:
            env[rc.ENV_STRATEGY] = self.strategy
        return rc.load_policies(self.path, env)


class FeedRange(dg.Config):
    """The feed range a run was requested for (the run starts at the applied cursor)."""

    system: str
    after: int = 0
    until: int | None = None  # None: whatever the feed has now
    page_size: int = 100


def _counts(prefix: str, names: tuple[str, ...], values: dict[str, int]) -> dict[str, int]:
    return {f"{prefix}.{name}": values.get(name, 0) for name in names}


@dg.op(description="Read the system's change feed from the applied cursor up to the requested end.")
def fetch_remote_changes(
    context: dg.OpExecutionContext,
    config: FeedRange,
    settings: ExportSettings,
    destinations: DestinationsResource,
) -> dg.Output[rc.FeedBatch]:
    project = settings.project()
    system = rc.feed_system(destinations.load(), config.system)
    st.init_sync_state(project.state)
    with project.state.connect() as conn:
        applied = st.get_cursor(conn, system.name).applied
    if config.until is not None and applied >= config.until:
        batch = rc.FeedBatch(system.name, applied, applied, ())
    else:
        with system.client() as client:
            batch = rc.fetch_batch(client, applied, config.until, page_size=config.page_size)
    context.log.info(
        f"{system.name}: {len(batch.changes)} change(s) after cursor {batch.after}"
        f" (requested {config.after}..{config.until})"
    )
    return dg.Output(
        batch,
        metadata={
            "system": system.name,
            "cursor_from": batch.after,
            "cursor_to": batch.until,
            "changes": len(batch.changes),
            "requested_from": config.after,
        },
    )


@dg.op(description="For each change: the sync base, the current source row and the remote.")
def load_sync_states(
    batch: rc.FeedBatch,
    settings: ExportSettings,
    destinations: DestinationsResource,
    conflict_policies: ConflictPoliciesResource,
) -> dg.Output[list[rc.Snapshot]]:
    project = settings.project()
    system = rc.feed_system(destinations.load(), batch.system)
    policy = conflict_policies.load().for_destination(system.name)
    snapshots = rc.load_snapshots(project, system, batch, policy)
    return dg.Output(
        snapshots,
        metadata={
            "changes": len(snapshots),
            "with_base": sum(s.base is not None for s in snapshots),
            "local_deleted": sum(s.local.record is None for s in snapshots),
            "remote_deleted": sum(s.remote.record is None for s in snapshots),
            "already_applied": sum(s.already_applied for s in snapshots),
        },
    )


@dg.op(description="Three-way detection and resolution under the destination's policy (plan).")
def resolve_changes(
    snapshots: list[rc.Snapshot],
    destinations: DestinationsResource,
    conflict_policies: ConflictPoliciesResource,
    batch: rc.FeedBatch,
) -> dg.Output[list[rc.Verdict]]:
    rc.feed_system(destinations.load(), batch.system)
    policy = conflict_policies.load().for_destination(batch.system)
    verdicts = [rc.decide(s, policy) for s in snapshots]
    planned: dict[str, int] = {}
    for v in verdicts:
        planned[v.outcome] = planned.get(v.outcome, 0) + 1
    return dg.Output(
        verdicts,
        metadata={
            "strategy": policy.strategy.value,
            **_counts("planned", rc.OUTCOMES, planned),
            "planned_write_backs": sum(v.applies and v.write_local for v in verdicts),
            "planned_pushes": sum(v.applies and v.push for v in verdicts),
        },
    )


@dg.op(
    retry_policy=STEP_RETRY,
    description="Write back to the source (origin = the system) with the new sync bases, queue "
    "manual conflicts, record every decision in the audit log.",
)
def apply_resolutions(
    context: dg.OpExecutionContext,
    batch: rc.FeedBatch,
    planned: list[rc.Verdict],
    settings: ExportSettings,
    destinations: DestinationsResource,
    conflict_policies: ConflictPoliciesResource,
) -> dg.Output[rc.ApplyReport]:
    project = settings.project()
    system = rc.feed_system(destinations.load(), batch.system)
    policy = conflict_policies.load().for_destination(system.name)
    report = rc.apply_batch(project, system, batch, policy, holder=default_holder(context.run_id))
    context.log.info(
        f"{system.name}: applied {sum(report.outcomes.values())} change(s) ({len(planned)}"
        f" planned): {dict(report.outcomes)}; {report.written_back} write-back(s),"
        f" {report.pushes_planned} push(es) queued"
    )
    return dg.Output(report, metadata=report.metadata())


@dg.op(
    retry_policy=STEP_RETRY,
    description="Push merged records to the system under fixed idempotency keys, once the "
    "window delivery has sent it every earlier change.",
)
def push_to_remote(
    context: dg.OpExecutionContext,
    applied: rc.ApplyReport,
    settings: ExportSettings,
    destinations: DestinationsResource,
) -> dg.Output[rc.PushReport]:
    project = settings.project()
    system = rc.feed_system(destinations.load(), applied.system)
    report = rc.push_pending(project, system)
    for error in report.errors:
        context.log.warning(f"push failed, kept for the next run: {error}")
    return dg.Output(report, metadata=report.metadata())


@dg.op(description="Advance the system's applied feed cursor: the batch is applied.")
def advance_feed_cursor(
    context: dg.OpExecutionContext,
    applied: rc.ApplyReport,
    pushes: rc.PushReport,
    settings: ExportSettings,
) -> dg.Output[int]:
    project = settings.project()
    cursor = st.advance_applied(project.state, applied.system, applied.until)
    rc.record_metrics(project, applied, pushes)
    summary = {**applied.metadata(), **pushes.metadata(), "applied_cursor": cursor}
    context.instance.add_run_tags(
        context.run_id,
        {f"reconcile/{key}": str(value) for key, value in summary.items() if key != "system"},
    )
    return dg.Output(cursor, metadata=summary)


@dg.job(
    name=RECONCILE_JOB,
    description="Reconcile one system's feed range: fetch, load, resolve, apply, push, advance.",
    tags={"subscription_export/kind": "reconcile"},
)
def reconcile_job() -> None:
    batch = fetch_remote_changes()
    snapshots = load_sync_states(batch)
    planned = resolve_changes(snapshots, batch=batch)
    applied = apply_resolutions(batch, planned)
    pushes = push_to_remote(applied)
    advance_feed_cursor(applied, pushes)


def run_config(system: str, after: int, until: int | None) -> dict[str, object]:
    return {
        "ops": {
            "fetch_remote_changes": {"config": {"system": system, "after": after, "until": until}}
        }
    }


@dg.sensor(
    job=reconcile_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Polls each system's change feed with its own cursor; one reconcile run per "
    "system and new cursor range.",
)
def external_changes_sensor(
    context: dg.SensorEvaluationContext,
    settings: ExportSettings,
    destinations: DestinationsResource,
) -> dg.SensorResult:
    project = settings.project()
    systems = rc.feed_systems(destinations.load())
    cursors: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    if not systems:
        return dg.SensorResult(
            skip_reason="no system with a change feed is configured", cursor=context.cursor
        )
    st.init_sync_state(project.state)
    requests = []
    idle = []
    for system in systems:
        with project.state.connect() as conn:
            applied = st.get_cursor(conn, system.name).applied
        after = max(int(cursors.get(system.name, 0)), applied)
        with system.client() as client:
            page = rc.fetch_batch(client, after, page_size=SENSOR_PAGE, max_changes=SENSOR_PAGE)
        cursors[system.name] = page.until
        if not page.changes:
            idle.append(f"{system.name} at {after}")
            continue
        st.record_requested(project.state, system.name, page.until)
        requests.append(
            dg.RunRequest(
                run_key=page.run_key,
                run_config=run_config(system.name, after, page.until),
                tags={SYSTEM_TAG: system.name},
            )
        )
    cursor = json.dumps(cursors, sort_keys=True)
    if not requests:
        return dg.SensorResult(skip_reason=f"no new changes ({', '.join(idle)})", cursor=cursor)
    return dg.SensorResult(run_requests=requests, cursor=cursor)


reconcile_jobs = [reconcile_job]
reconcile_sensors = [external_changes_sensor]
