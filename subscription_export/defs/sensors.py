"""`change_log_sensor`: new changes → new window partitions → one run per window.

A run the sensor created but could not launch (the instance's storage or run coordinator
failed at submit) stays NOT_STARTED, and its window is behind the sensor's cursor: it would
never be requested again. Each evaluation therefore requests those runs' keys once more; the
sensor daemon finds the existing NOT_STARTED run by its run key and submits it again.

A window whose run failed for good (step and run retries spent) is behind the cursor too, and
the sensor does not request it again (a deterministic failure would loop). Each tick names
such windows instead - in its skip reason, else in a warning - so the sensor page does not
say "no new window" while a window stays unexported.
"""

import dagster as dg

from subscription_export.defs.jobs import export_window_job
from subscription_export.defs.partitions import cdc_windows
from subscription_export.defs.resources import ExportSettings
from subscription_export.export.cut import cut_windows, incomplete_windows, windows_to_run
from subscription_export.runtime import Project

SENSOR_NAME = "change_log_sensor"
DEFAULT_INTERVAL_S = 30
PARTITION_TAG = "dagster/partition"
WILL_RETRY_TAG = "dagster/will_retry"  # set by Dagster on a failed run when run retries are on
_IN_FLIGHT = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
SHOWN_STRANDED = 5


def unlaunched_runs(instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    """Requests for this sensor's runs that were created but never launched."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            job_name=export_window_job.name,
            statuses=[dg.DagsterRunStatus.NOT_STARTED],
            tags={"dagster/sensor_name": SENSOR_NAME},
        )
    )
    return [
        dg.RunRequest(run_key=run.tags["dagster/run_key"], partition_key=run.tags[PARTITION_TAG])
        for run in sorted(runs, key=lambda r: r.tags.get(PARTITION_TAG, ""))
        if "dagster/run_key" in run.tags and PARTITION_TAG in run.tags
    ]


def stranded_windows(project: Project, instance: dg.DagsterInstance, cursor: int) -> list[str]:
    """Windows behind the cursor (requested once, never again) that some table's format has
    not finished, with no run working on them or about to be retried by Dagster."""
    behind = [w.key for w in incomplete_windows(project) if w.hi <= cursor]
    if not behind:
        return []
    # Any job: a backfill from an asset's page runs the implicit asset job, not export_window.
    busy = {
        run.tags.get(PARTITION_TAG)
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=_IN_FLIGHT))
    }
    retried = instance.get_runs(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], tags={WILL_RETRY_TAG: "true"})
    )
    busy |= {r.tags.get(PARTITION_TAG) for r in retried if r.is_complete_and_waiting_to_retry}
    return [key for key in behind if key not in busy]


def stranded_text(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_STRANDED])
    more = f" and {len(keys) - SHOWN_STRANDED} more" if len(keys) > SHOWN_STRANDED else ""
    return (
        f"{len(keys)} window(s) behind the cursor not fully exported and no run is working on"
        f" them ({shown}{more}); the sensor does not request them again: backfill them"
        " (export_window → Partitions → Failed or Missing) or run `subscription-export run --once`"
    )


def build_change_log_sensor(interval_s: float = DEFAULT_INTERVAL_S) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        job=export_window_job,
        minimum_interval_seconds=max(1, round(interval_s)),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sequences new change-log rows, cuts LSN windows and launches one run per"
        " window (again for a run that failed to launch).",
    )
    def change_log_sensor(
        context: dg.SensorEvaluationContext, settings: ExportSettings
    ) -> dg.SensorResult | dg.SkipReason:
        project = settings.project()
        cursor = int(context.cursor or 0)
        cut = cut_windows(project)
        due = windows_to_run(project, after_hi=cursor)
        relaunch = unlaunched_runs(context.instance)
        stranded = stranded_windows(project, context.instance, cursor)
        for request in relaunch:
            context.log.warning(
                f"window {request.partition_key}: its run was created but never launched;"
                " submitting it again"
            )
        if not due and not relaunch:
            held = "".join(f"; held by {h.describe()}" for h in cut.sequenced.held_by)
            return dg.SkipReason(
                f"no new window: {cut.pending} sequenced change(s) wait for a window to close,"
                f" {cut.sequenced.waiting} committed but not yet sequenced{held}"
                + (f"; {stranded_text(stranded)}" if stranded else "")
            )
        if stranded:
            context.log.warning(stranded_text(stranded))
        known = set(context.instance.get_dynamic_partitions(cdc_windows.name))
        new_keys = [w.key for w in due if w.key not in known]
        return dg.SensorResult(
            run_requests=[
                *relaunch,
                *(dg.RunRequest(run_key=w.key, partition_key=w.key) for w in due),
            ],
            dynamic_partitions_requests=[cdc_windows.build_add_request(new_keys)]
            if new_keys
            else [],
            cursor=str(due[-1].hi) if due else context.cursor,
        )

    return change_log_sensor


change_log_sensor = build_change_log_sensor()
