"""`quarantine replay` recovers a change into its window, then sends it to the destinations
that already had the window. When that send fails (a dead letter of the destination), the
change is still not where it belongs: the command must not exit 0. SQLite, real sandbox ERP."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from subscription_export.core.settings import Settings, replace
from subscription_export.delivery.window import deliver_window
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.formats.writers import FORMATS
from subscription_export.runtime import Project
from subscription_export.sandbox.faults import FaultPlan, FaultSpec
from subscription_export.sandbox.server import SandboxServer
from subscription_export.sandbox.systems import ErpSystem
from subscription_export.source.demo_table import init_demo_source
from subscription_export.state.windows import Window
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.delivery.test_window_delivery import HOLDER, write_destinations
from subscription_export_tests.helpers import insert, update, writer

ERP_DOWN = FaultPlan(
    endpoints={"POST /subscriptions/$batch": FaultSpec(error=1.0, error_statuses=(503,))}
)


def _export(project: Project) -> Window:
    [window] = cut_windows(project).new_windows
    for fmt in FORMATS:
        export_window_file(project, fmt, window, holder=HOLDER)
    return window


def test_a_recovered_change_the_destination_refuses_makes_replay_exit_1(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = writer(sqlite_url)
    init_demo_source(engine)
    settings = Settings(
        source_url=sqlite_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "out",
        window_max_age_s=0.0,
        schema_contract="discard_row",
    )
    erp = ErpSystem()
    with SandboxServer(erp) as server:
        path = tmp_path / "destinations.toml"
        config = write_destinations(path, {"erp": server}, retry={"max_attempts": 1})
        with engine.begin() as conn:
            insert(conn, "a")  # LSN 1
        project = Project(settings)
        deliver_window(project, config.destinations["erp"], _export(project), HOLDER)
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE subscriptions ADD COLUMN seats integer"))
        init_demo_source(engine)
        with engine.begin() as conn:
            update(conn, "a", seats=7)  # LSN 2: refused by discard_row, quarantined
        window = _export(project)
        assert deliver_window(project, config.destinations["erp"], window, HOLDER).rows == 0

        erp.set_faults(ERP_DOWN)
        evolving = replace(settings, schema_contract="evolve")
        env = {"SUBSCRIPTION_EXPORT_DESTINATIONS": str(path)}
        result = run_cli(
            ["quarantine", "replay", "--json"], evolving, tmp_path, check=False, env=env
        )
    [report] = json.loads(result.stdout)
    assert report["recovered"] == [2]
    assert [(d["lsn"], d["outcome"]) for d in report["deliveries"]] == [(2, "dead_letter")]
    assert erp.records["a"]["version"] == 1  # the ERP never got LSN 2...
    assert result.returncode == 1, result.stdout + result.stderr  # ...so this is no success
