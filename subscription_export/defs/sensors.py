"""`change_log_sensor`: new changes → new window partitions → one run per window.

A run the sensor created but could not launch (the instance's storage or run coordinator
failed at submit) stays NOT_STARTED, and its window is behind the sensor's cursor: it would
never be requested again. Each evaluation therefore requests those runs' keys once more; the
sensor daemon finds the existing NOT_STARTED run by its run key and submits it again.
"""

import dagster as dg

from subscription_export.defs.jobs import export_window_job
from subscription_export.defs.partitions import cdc_windows
from subscription_export.defs.resources import ExportSettings
from subscription_export.export.cut import cut_windows, windows_to_run

SENSOR_NAME = "change_log_sensor"
DEFAULT_INTERVAL_S = 30
PARTITION_TAG = "dagster/partition"


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
            )
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
