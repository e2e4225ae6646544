"""The destination sync assets in Dagster: materialized per window on an ephemeral instance."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
from subscription_export.defs.assets import subscription_changes, window_assets
from subscription_export.defs.checks import window_checks
from subscription_export.defs.destinations import (
    SYNC_WINDOW_JOB,
    DestinationsResource,
    accounting_sync,
    crm_sync,
    destination_assets,
    erp_sync,
    sync_window_job,
)
from subscription_export.defs.io_managers import CsvIOManager, JsonLinesIOManager, ParquetIOManager
from subscription_export.defs.partitions import cdc_windows
from subscription_export.defs.resources import ExportSettings
from subscription_export.defs.runner import run_cycle
from subscription_export.delivery.config import load_destinations
from subscription_export.delivery.dead_letters import discard, list_dead_letters
from subscription_export.export.cut import cut_windows
from subscription_export.runtime import Project
from subscription_export.sandbox.faults import FaultPlan, FaultSpec
from subscription_export.sandbox.server import running_sandbox
from subscription_export.source.demo_table import init_demo_source
from subscription_export.state.windows import Window, list_windows
from subscription_export_tests.delivery.test_window_delivery import (
    assert_in_sync,
    write_changes,
    write_destinations,
)

SYNC = [erp_sync, crm_sync, accounting_sync]


@pytest.fixture
def project(sqlite_url: str, tmp_path: Path) -> Project:
    init_demo_source(engine_for(sqlite_url, writer=True))
    settings = Settings(
        source_url=sqlite_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_changes=40,
        window_max_age_s=0.0,
        read_batch_size=32,
    )
    write_changes(settings.source_url, seed=3, subscriptions=20, changes=60)
    project = Project(settings)
    cut_windows(project)
    return project


def _windows(project: Project, instance: dg.DagsterInstance) -> list[Window]:
    windows = list_windows(project.state)
    instance.add_dynamic_partitions("cdc_windows", [w.key for w in windows])
    return windows


def _resources(project: Project, destinations: DestinationsResource) -> dict[str, object]:
    settings = ExportSettings.from_settings(project.settings)
    return {
        "settings": settings,
        "parquet_io_manager": ParquetIOManager(settings=settings),
        "destinations": destinations,
    }


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    [event] = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in event.metadata.items()}


def test_each_window_is_exported_then_delivered_to_every_system(
    project: Project, tmp_path: Path
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    windows = _windows(project, instance)
    assert len(windows) == 2
    faults = FaultPlan(default=FaultSpec(error=0.3, error_statuses=(503,), item_failure=0.05))
    with running_sandbox(faults=faults) as servers:
        write_destinations(tmp_path / "destinations.toml", servers)
        resource = DestinationsResource(path=str(tmp_path / "destinations.toml"))
        for window in windows:
            result = dg.materialize(
                [subscription_changes, *SYNC],
                partition_key=window.key,
                instance=instance,
                resources=_resources(project, resource),
            )
            assert result.success
            for name in ("erp", "crm", "accounting"):
                metadata = _metadata(result, f"{name}_sync")
                assert metadata["configured"] is True and metadata["status"] == "delivered"
                assert (metadata["lsn_from"], metadata["lsn_to"]) == (window.lo, window.hi)
                assert metadata["watermark"] == window.hi
                assert metadata["dead_lettered"] == 0
                assert metadata["rows"] == window.changes
                assert metadata["delivered"] + metadata["skipped"] == window.changes
                assert isinstance(metadata["retried"], int)
            assert _metadata(result, "erp_sync")["retried"] > 0  # 30% of ERP requests 503
        assert_in_sync(project, servers)


def test_unconfigured_destinations_are_skipped_without_failing(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUBSCRIPTION_EXPORT_DESTINATIONS", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./destinations.toml here
    instance = dg.DagsterInstance.ephemeral()
    first = _windows(project, instance)[0]
    result = dg.materialize(
        [subscription_changes, *SYNC],
        partition_key=first.key,
        instance=instance,
        resources=_resources(project, DestinationsResource.from_env()),
    )
    assert result.success
    for name in ("erp", "crm", "accounting"):
        assert _metadata(result, f"{name}_sync") == {"configured": False, "destination": name}
    assert project.watermarks.get("erp") == 0


def test_a_blocked_window_fails_its_step_without_retries(project: Project, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    first = _windows(project, instance)[0]
    lost = FaultPlan(endpoints={"PUT /subscriptions": FaultSpec(lost_response=1.0)})
    with running_sandbox(("erp",), faults=lost) as servers:
        path = tmp_path / "destinations.toml"
        write_destinations(path, servers, retry={"max_attempts": 1})
        resource = DestinationsResource(path=str(path), on_dead_letter="block")
        result = dg.materialize(
            [subscription_changes, erp_sync],
            partition_key=first.key,
            instance=instance,
            resources=_resources(project, resource),
            raise_on_error=False,
        )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "erp_sync"
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "open dead letter(s) and the policy is block" in message
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    assert project.watermarks.get("erp") == 0


def proposed_definitions(project: Project, path: Path) -> dg.Definitions:
    """The wiring proposed for defs/definitions.py and defs/jobs.py, built the same way (the
    sensor is left out: it targets today's `export_window` job object from jobs.py)."""
    settings = ExportSettings.from_settings(project.settings)
    export_window_job = dg.define_asset_job(
        "export_window",
        selection=dg.AssetSelection.assets(*window_assets, *destination_assets()),
        partitions_def=cdc_windows,
    )
    return dg.Definitions(
        assets=[*window_assets, *destination_assets()],
        asset_checks=window_checks,
        jobs=[export_window_job, sync_window_job],
        resources={
            "settings": settings,
            "parquet_io_manager": ParquetIOManager(settings=settings),
            "csv_io_manager": CsvIOManager(settings=settings),
            "jsonl_io_manager": JsonLinesIOManager(settings=settings),
            "destinations": DestinationsResource(path=str(path)),
        },
    )


def test_the_export_window_job_exports_checks_and_delivers_each_window(
    project: Project, tmp_path: Path
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    windows = _windows(project, instance)
    with running_sandbox() as servers:
        path = tmp_path / "destinations.toml"
        write_destinations(path, servers)
        defs = proposed_definitions(project, path)
        dg.Definitions.validate_loadable(defs)
        export_window = defs.resolve_job_def("export_window")
        for window in windows:
            result = export_window.execute_in_process(partition_key=window.key, instance=instance)
            assert result.success
            done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
            assert {"subscription_changes", "erp_sync", "crm_sync", "accounting_sync"} <= done
            checks = result.get_asset_check_evaluations()
            assert len(checks) == 9 and all(c.passed for c in checks)  # 6 + 1 per destination
        assert_in_sync(project, servers)

        again = defs.resolve_job_def(SYNC_WINDOW_JOB).execute_in_process(
            partition_key=windows[0].key, instance=instance
        )
        assert again.success
        assert _metadata(again, "crm_sync")["status"] == "already_delivered"
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("crm_sync"))
    assert node.parent_keys == {dg.AssetKey("subscription_changes")}  # lineage in the UI
    assert node.group_name == "destinations"


def test_destination_assets_add_one_asset_per_extra_destination(tmp_path: Path) -> None:
    path = tmp_path / "destinations.toml"
    path.write_text(
        '[destinations.crm]\nbase_url = "http://c"\n'
        '[destinations.crm_eu]\nkind = "crm"\nbase_url = "http://c2"\n'
    )
    names = [a.key.to_user_string() for a in destination_assets(load_destinations(path))]
    assert names == ["erp_sync", "crm_sync", "accounting_sync", "crm_eu_sync"]
    assert destination_assets()[:3] == SYNC  # one definition per name: selections stay valid


def test_a_cycle_catches_up_a_destination_behind_the_exports(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destination added later (or left behind by a crash) is delivered every exported
    window by the next `run --once`, even when no new window was cut."""
    instance = dg.DagsterInstance.ephemeral()
    path = tmp_path / "destinations.toml"
    monkeypatch.setenv("SUBSCRIPTION_EXPORT_DESTINATIONS", str(path))
    with running_sandbox() as servers:
        write_destinations(path, {n: s for n, s in servers.items() if n != "crm"})
        first = run_cycle(project.settings, instance=instance)
        assert [r.success for r in first.runs] == [True, True]
        last = list_windows(project.state)[-1]
        assert project.watermarks.get("erp") == last.hi and project.watermarks.get("crm") == 0

        write_destinations(path, servers)  # the CRM is configured now
        second = run_cycle(project.settings, instance=instance)
        assert second.cut.new_windows == []
        [catch_up] = second.runs
        assert catch_up.success and catch_up.window == last
        run = instance.get_run_by_id(catch_up.run_id)
        assert run is not None and run.job_name == SYNC_WINDOW_JOB
        assert run.tags["subscription_export/trigger"] == "cli-catch-up"
        assert project.watermarks.get("crm") == last.hi
        assert_in_sync(project, servers)

        assert run_cycle(project.settings, instance=instance).runs == []  # nothing behind


def test_a_destination_with_its_own_name_is_delivered_by_run_once(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[destinations.acct]` with `kind = "accounting"`: it gets its own asset in the job the
    cycle runs, its watermark and its deliveries (it used to get no asset: the run succeeded
    and the server received nothing)."""
    instance = dg.DagsterInstance.ephemeral()
    path = tmp_path / "destinations.toml"
    monkeypatch.setenv("SUBSCRIPTION_EXPORT_DESTINATIONS", str(path))
    with running_sandbox() as servers:
        write_destinations(path, {"accounting": servers["accounting"]})
        text = path.read_text().replace("[destinations.accounting", "[destinations.acct")
        path.write_text(
            text.replace("[destinations.acct]", '[destinations.acct]\nkind = "accounting"')
        )
        result = run_cycle(project.settings, instance=instance)
        assert result.runs and all(r.success for r in result.runs)
        last = list_windows(project.state)[-1]
        assert project.watermarks.get("acct") == last.hi
        assert len(servers["accounting"].system.journal) > 0


def _held_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [check] = [
        c for c in result.get_asset_check_evaluations() if c.check_name == "no_records_held_back"
    ]
    return check


def test_under_skip_a_window_that_dead_letters_fails_its_held_back_check(
    project: Project, tmp_path: Path
) -> None:
    """`skip` delivers the rest and carries on - the user's choice - but the destination then
    lacks records: the run stays green, its `no_records_held_back` check does not (the CLI's
    `run` exits 3 for the same state)."""
    instance = dg.DagsterInstance.ephemeral()
    first, second = _windows(project, instance)[:2]
    lost = FaultPlan(endpoints={"PUT /subscriptions": FaultSpec(lost_response=1.0)})
    with running_sandbox(("erp",), faults=lost) as servers:
        path = tmp_path / "destinations.toml"
        write_destinations(path, servers, retry={"max_attempts": 1})
        resource = DestinationsResource(path=str(path), on_dead_letter="skip")
        result = dg.materialize(
            [subscription_changes, erp_sync],
            partition_key=first.key,
            instance=instance,
            resources=_resources(project, resource),
        )
    assert result.success and _metadata(result, "erp_sync")["dead_lettered"] > 0
    check = _held_check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "record(s) waiting behind them" in (check.description or "")
    assert "dead-letters replay --destination erp" in (check.description or "")

    with running_sandbox(("erp",)) as servers:  # the letters given up on: nothing held
        path = tmp_path / "destinations.toml"
        write_destinations(path, servers)
        letters = list_dead_letters(project.state, "erp")
        discard(project.state, [letter.id for letter in letters])
        resource = DestinationsResource(path=str(path), on_dead_letter="skip")
        result = dg.materialize(
            [subscription_changes, erp_sync],
            partition_key=second.key,
            instance=instance,
            resources=_resources(project, resource),
        )
    assert result.success and _held_check(result).passed
