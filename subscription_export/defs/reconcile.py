"""The `reconcile` job (ops) and `external_changes_sensor`: edits made in the ERP and the CRM
come back into the source. Each op is a thin call to one step of `reconcile/` (`flow.py` lists
them); this module only wires them into Dagster.

One run reconciles one system over a cursor range of its change feed:

    fetch_remote_changes -> load_sync_states -> resolve_changes -> apply_resolutions
        -> push_to_remote -> advance_feed_cursor

`load_sync_states` and `resolve_changes` show what the run plans (decided without locks);
`apply_resolutions` decides again under each source row's lock and is authoritative (a later
change of the same subscription must see the write-back of an earlier one). Every op reports
counts per outcome in its output metadata, and the last op copies them to run tags, so the
runs list shows them without opening a run.

The sensor keeps one feed cursor per system in its cursor (JSON `{"crm": 3, "erp": 12}`) and
mirrors it to the state database (`sync_feed_cursors.requested`) for the CLI. A system with no
new feed change but pending pushes that are due (the delivery has sent what they waited for,
or a refused one is to be retried) gets a run too, over an empty feed range: without it a push
deferred behind the delivery would wait for the system's next, unrelated, feed change. A run
starts from the cursor the previous runs have *applied* (`sync_feed_cursors.applied`), not
from the range it was requested for, so a failed run's changes are picked up by the next run
of the system; a change applied twice is recognized by its cursor and skipped. When no new
change comes after a failed run, the sensor asks for its unapplied range again under a new run
key (the failed run's id in it: the daemon never re-launches a key it has seen); after three
failed runs in a row it stops and its skip reason says so, until a run succeeds.
"""

import json
import os

import dagster as dg

from subscription_export.defs.assets import STEP_RETRY
from subscription_export.defs.destinations import DestinationsResource
from subscription_export.defs.resources import ExportSettings
from subscription_export.delivery.config import DestinationConfig
from subscription_export.reconcile.apply import ApplyReport, apply_batch
from subscription_export.reconcile.feeds import (
    FeedBatch,
    applied_cursor,
    feed_system,
    feed_systems,
    fetch_changes,
    poll_changes,
)
from subscription_export.reconcile.flow import advance
from subscription_export.reconcile.outbox import Push
from subscription_export.reconcile.policies import (
    ENV_POLICY_FILE,
    ENV_STRATEGY,
    ConflictPolicies,
    load_policies,
)
from subscription_export.reconcile.pushes import PushReport, due_pushes, push_pending
from subscription_export.reconcile.snapshot import load_snapshots, snapshot_metadata
from subscription_export.reconcile.three_way import Snapshot, Verdict, plan, plan_metadata
from subscription_export.runtime import Project
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
        raw = os.environ.get(ENV_POLICY_FILE)
        return cls(path=os.path.abspath(raw) if raw else None)

    def load(self) -> ConflictPolicies:
        env = dict(os.environ)
        if self.strategy:
            env[ENV_STRATEGY] = self.strategy
        return load_policies(self.path, env)


class FeedRange(dg.Config):
    """The feed range a run was requested for (the run starts at the applied cursor)."""

    system: str
    after: int = 0
    until: int | None = None  # None: whatever the feed has now
    page_size: int = 100


def _system(destinations: DestinationsResource, name: str) -> DestinationConfig:
    return feed_system(destinations.load(), name)


@dg.op(description="Read the system's change feed from the applied cursor up to the requested end.")
def fetch_remote_changes(
    context: dg.OpExecutionContext,
    config: FeedRange,
    settings: ExportSettings,
    destinations: DestinationsResource,
) -> dg.Output[FeedBatch]:
    system = _system(destinations, config.system)
    batch = fetch_changes(settings.project(), system, config.until, page_size=config.page_size)
    context.log.info(
        f"{system.name}: {len(batch.changes)} change(s) after cursor {batch.after}"
        f" (requested {config.after}..{config.until})"
    )
    return dg.Output(batch, metadata={**batch.metadata(), "requested_from": config.after})


@dg.op(description="For each change: the sync base, the current source row and the remote.")
def load_sync_states(
    batch: FeedBatch,
    settings: ExportSettings,
    destinations: DestinationsResource,
    conflict_policies: ConflictPoliciesResource,
) -> dg.Output[list[Snapshot]]:
    system = _system(destinations, batch.system)
    policy = conflict_policies.load().for_destination(system.name)
    snapshots = load_snapshots(settings.project(), system, batch, policy)
    return dg.Output(snapshots, metadata=snapshot_metadata(snapshots))


@dg.op(description="Three-way detection and resolution under the destination's policy (plan).")
def resolve_changes(
    snapshots: list[Snapshot],
    destinations: DestinationsResource,
    conflict_policies: ConflictPoliciesResource,
    batch: FeedBatch,
) -> dg.Output[list[Verdict]]:
    system = _system(destinations, batch.system)
    policy = conflict_policies.load().for_destination(system.name)
    verdicts = plan(snapshots, policy)
    return dg.Output(verdicts, metadata=plan_metadata(verdicts, policy))


@dg.op(
    retry_policy=STEP_RETRY,
    description="Write back to the source (origin = the system) with the new sync bases, queue "
    "manual conflicts, record every decision in the audit log.",
)
def apply_resolutions(
    context: dg.OpExecutionContext,
    batch: FeedBatch,
    planned: list[Verdict],
    settings: ExportSettings,
    destinations: DestinationsResource,
    conflict_policies: ConflictPoliciesResource,
) -> dg.Output[ApplyReport]:
    system = _system(destinations, batch.system)
    policy = conflict_policies.load().for_destination(system.name)
    holder = default_holder(context.run_id)
    report = apply_batch(settings.project(), system, batch, policy, holder=holder)
    context.log.info(
        f"{system.name}: applied {sum(report.outcomes.values())} change(s) ({len(planned)}"
        f" planned): {dict(report.outcomes)}; {report.written_back} write-back(s),"
        f" {report.pushes_planned} push(es) queued"
    )
    for bad in report.invalid:  # set aside, audited; the reason quotes the id escaped
        context.log.warning(
            f"{system.name}: invalid change at cursor {bad['cursor']}: {bad['reason']}"
        )
    left_off = report.outcomes.get("invalid", 0) - len(report.invalid)
    if left_off > 0:  # the report lists the first ones only (`apply.INVALID_SHOWN`)
        context.log.warning(f"{system.name}: {left_off} more invalid change(s), in the audit log")
    return dg.Output(report, metadata=report.metadata())


@dg.op(
    retry_policy=STEP_RETRY,
    description="Push merged records to the system under fixed idempotency keys, once the "
    "window delivery has sent it every earlier change.",
)
def push_to_remote(
    context: dg.OpExecutionContext,
    applied: ApplyReport,
    settings: ExportSettings,
    destinations: DestinationsResource,
) -> dg.Output[PushReport]:
    report = push_pending(settings.project(), _system(destinations, applied.system))
    for error in report.errors:
        context.log.warning(f"push failed, kept for the next run: {error}")
    return dg.Output(report, metadata=report.metadata())


@dg.op(description="Advance the system's applied feed cursor: the batch is applied.")
def advance_feed_cursor(
    context: dg.OpExecutionContext,
    applied: ApplyReport,
    pushes: PushReport,
    settings: ExportSettings,
) -> dg.Output[int]:
    report = advance(settings.project(), applied, pushes)
    summary = report.metadata()
    context.instance.add_run_tags(
        context.run_id,
        {f"reconcile/{key}": str(value) for key, value in summary.items() if key != "system"},
    )
    if pushes.dead_lettered:
        # Failed only now, with the cursor advanced (the edits are applied): a run ending
        # SUCCESS would hide that the merged record will not reach the system until someone
        # replays or discards the dead letter (the CLI's `reconcile` exits 1 for it). A push
        # refused but kept for the next run stays a warning: the sensor retries it.
        raise dg.Failure(
            description=(
                f"{applied.system}: {pushes.dead_lettered} push(es) refused for the last time,"
                " now dead letters (dead-letters list --destination"
                f" {applied.system}; replay or discard): {'; '.join(pushes.errors)}"
            ),
            metadata=summary,
            allow_retries=False,
        )
    return dg.Output(report.cursor, metadata=summary)


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
    "system and new cursor range, or for pending pushes that are due.",
)
def external_changes_sensor(
    context: dg.SensorEvaluationContext,
    settings: ExportSettings,
    destinations: DestinationsResource,
) -> dg.SensorResult:
    project = settings.project()
    systems = feed_systems(destinations.load())
    cursors: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    if not systems:
        return dg.SensorResult(
            skip_reason="no system with a change feed is configured", cursor=context.cursor
        )
    requests = []
    idle = []
    for system in systems:
        requested = int(cursors.get(system.name, 0))
        page = poll_changes(project, system, requested, SENSOR_PAGE)
        cursors[system.name] = page.until
        if page.changes:
            requests.append(
                dg.RunRequest(
                    run_key=page.run_key,
                    run_config=run_config(system.name, page.after, page.until),
                    tags={SYSTEM_TAG: system.name},
                )
            )
            continue
        failed = _failed_in_a_row(context.instance, system.name)
        if len(failed) >= MAX_FAILED_IN_A_ROW:
            idle.append(
                f"{system.name}: {len(failed)} reconcile runs failed in a row (last"
                f" {failed[0]}); re-run one once the cause is fixed"
            )
            continue
        retry = _retry_run(project, system.name, requested, failed)
        if retry is not None:
            requests.append(retry)
            continue
        due = due_pushes(project, system)
        if due:
            requests.append(_push_run(system.name, page.after, due, failed))
        else:
            idle.append(f"{system.name} at {page.after}")
    cursor = json.dumps(cursors, sort_keys=True)
    if not requests:
        return dg.SensorResult(
            skip_reason=f"no new changes nor pushes due ({', '.join(idle)})", cursor=cursor
        )
    return dg.SensorResult(run_requests=requests, cursor=cursor)


MAX_FAILED_IN_A_ROW = 3  # then an operator looks: a run failing for a bug would loop forever
_ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _failed_in_a_row(instance: dg.DagsterInstance, system: str) -> list[str]:
    """Ids of the system's latest runs that ended failed or canceled, newest first, up to the
    last one that did not (one still queued or running stops the count: not a failure)."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=RECONCILE_JOB, tags={SYSTEM_TAG: system}),
        limit=MAX_FAILED_IN_A_ROW,
    )
    failed = []
    for run in runs:
        if run.status not in _ENDED_BADLY:
            break
        failed.append(run.run_id)
    return failed


def _retry_run(
    project: Project, system: str, requested: int, failed: list[str]
) -> dg.RunRequest | None:
    """After a failed run, its feed range again when no cursor past it was applied: a new key
    (the failed run's id in it), so the daemon does not take it for the run that failed."""
    applied = applied_cursor(project, system)
    if not failed or applied >= requested:
        return None
    return dg.RunRequest(
        run_key=f"{system}:{applied}-{requested}:after-{failed[0][:8]}",
        run_config=run_config(system, applied, requested),
        tags={SYSTEM_TAG: system},
    )


def _push_run(system: str, cursor: int, due: list[Push], failed: list[str]) -> dg.RunRequest:
    """A run for due pushes alone (an empty feed range). The key names the pushes and their
    attempts so far, so a retry of a refused push is a new run and a sent one is not re-run;
    after a failed run (which may not have counted an attempt) it names that run too."""
    attempts = sum(p.attempts for p in due)
    after = f":after-{failed[0][:8]}" if failed else ""
    return dg.RunRequest(
        run_key=f"{system}:{cursor}-{cursor}:push-{due[-1].id}-{attempts}{after}",
        run_config=run_config(system, cursor, cursor),
        tags={SYSTEM_TAG: system},
    )


reconcile_jobs = [reconcile_job]
reconcile_sensors = [external_changes_sensor]
