"""`change_log_sensor`: new changes → new window partitions → one run per window."""

import dagster as dg

from subscription_export.defs.jobs import export_window_job
from subscription_export.defs.partitions import cdc_windows
from subscription_export.defs.resources import ExportSettings
from subscription_export.export.cut import cut_windows, windows_to_run


@dg.sensor(
    job=export_window_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sequences new change-log rows, cuts LSN windows and launches one run per window.",
)
def change_log_sensor(
    context: dg.SensorEvaluationContext, settings: ExportSettings
) -> dg.SensorResult | dg.SkipReason:
    project = settings.project()
    cursor = int(context.cursor or 0)
    cut = cut_windows(project)
    due = windows_to_run(project, after_hi=cursor)
    if not due:
        held = "".join(f"; held by {h.describe()}" for h in cut.sequenced.held_by)
        return dg.SkipReason(
            f"no new window: {cut.pending} sequenced change(s) wait for a window to close,"
            f" {cut.sequenced.waiting} committed but not yet sequenced{held}"
        )
    known = set(context.instance.get_dynamic_partitions(cdc_windows.name))
    new_keys = [w.key for w in due if w.key not in known]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=w.key, partition_key=w.key) for w in due],
        dynamic_partitions_requests=[cdc_windows.build_add_request(new_keys)] if new_keys else [],
        cursor=str(due[-1].hi),
    )
