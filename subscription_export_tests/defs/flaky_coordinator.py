"""A run coordinator whose first submit happens during a storage outage, as in the production
bug (every event write failed): the submit fails and so does Dagster's attempt to mark the run
failed, so the run stays NOT_STARTED with nobody to launch it. The outage is real: the
instance's `event_logs` table is renamed away for two seconds. Loaded by the daemon from a test
instance's dagster.yaml; a marker file makes it happen exactly once."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psycopg
from dagster import DagsterRun
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext

MARKER_ENV = "FAIL_FIRST_SUBMIT_MARKER"
OUTAGE_S = 2.0


def _rename_event_log(url: str, old: str, new: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")


class FailFirstSubmit(QueuedRunCoordinator):
    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        marker = Path(os.environ[MARKER_ENV])
        if not marker.exists():
            marker.write_text(context.dagster_run.run_id)
            url = os.environ["DAGSTER_PG_URL"]
            _rename_event_log(url, "event_logs", "event_logs_away")
            threading.Timer(
                OUTAGE_S, _rename_event_log, (url, "event_logs_away", "event_logs")
            ).start()
            raise ConnectionError("simulated: the instance storage is unreachable at submit")
        return super().submit_run(context)
