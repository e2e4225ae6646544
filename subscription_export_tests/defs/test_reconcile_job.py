"""The Dagster layer of the bidirectional sync: `external_changes_sensor` and the `reconcile`
job, on an ephemeral instance against real sandbox servers and a real source."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
from subscription_export.defs.definitions import build_definitions
from subscription_export.defs.destinations import DestinationsResource
from subscription_export.defs.reconcile import (
    SYSTEM_TAG,
    ConflictPoliciesResource,
    external_changes_sensor,
    reconcile_job,
    run_config,
)
from subscription_export.defs.resources import ExportSettings
from subscription_export.metrics.store import reconcile_outcomes
from subscription_export.reconcile import sync_state as st
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.reconcile.test_reconcile import World, record, seeded, world


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """SQLite only: the domain tests cover PostgreSQL; these cover the Dagster wiring."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    init_demo_source(engine_for(source, writer=True))
    return Settings(
        source_url=source,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
    )


@contextmanager
def dagster_world(
    settings: Settings, tmp_path: Path, strategy: str
) -> Iterator[tuple[World, dict[str, Any], dg.DagsterInstance]]:
    with world(settings, tmp_path, {"strategy": strategy}) as w:
        resources = {
            "settings": ExportSettings.from_settings(settings),
            "destinations": DestinationsResource(path=str(tmp_path / "destinations.toml")),
            "conflict_policies": ConflictPoliciesResource(strategy=strategy),
        }
        with dg.instance_for_test() as instance:
            yield w, resources, instance


def tick(
    instance: dg.DagsterInstance, resources: Mapping[str, Any], cursor: str | None
) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = external_changes_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def output_metadata(result: dg.ExecuteInProcessResult, op: str) -> dict[str, Any]:
    (event,) = [e for e in result.all_node_events if e.is_successful_output and e.node_name == op]
    data = event.step_output_data.metadata
    return {k: getattr(v, "value", v) for k, v in data.items()}


def test_the_sensor_launches_one_run_per_system_and_the_runs_apply_the_edits(
    settings: Settings, tmp_path: Path
) -> None:
    with dagster_world(settings, tmp_path, "last_writer_wins") as (w, resources, instance):
        seeded(w)
        w.remote_edit("erp", "s1", 1, name="ERP name")
        w.remote_edit("erp", "s1", 2, status="paused")
        w.remote_edit("crm", "s1", 3, category="crm")

        first = tick(instance, resources, None)
        requests = {r.run_key: r for r in first.run_requests or []}
        assert sorted(requests) == ["crm:0-1", "erp:0-2"]
        assert requests["erp:0-2"].run_config == run_config("erp", 0, 2)
        assert json.loads(first.cursor or "") == {"crm": 1, "erp": 2}
        mirrored = st.all_cursors(w.project.state)
        assert {k: (c.requested, c.applied) for k, c in mirrored.items()} == {
            "crm": (1, 0),
            "erp": (2, 0),
        }

        for key in sorted(requests):
            request = requests[key]
            run = reconcile_job.execute_in_process(
                run_config=request.run_config,
                instance=instance,
                resources=resources,
                tags=request.tags,
            )
            assert run.success
            applied = output_metadata(run, "apply_resolutions")
            assert applied["outcome.merged"] == (2 if key.startswith("erp") else 1)
            assert applied["written_back"] == applied["outcome.merged"]
            planned = output_metadata(run, "resolve_changes")
            assert planned["planned.merged"] == applied["outcome.merged"]
            tags = instance.get_run_by_id(run.run_id).tags  # type: ignore[union-attr]
            assert tags["reconcile/outcome.merged"] == str(applied["outcome.merged"])
            assert tags["subscription_export/system"] == key.split(":")[0]

        applied_cursors = st.all_cursors(w.project.state)
        assert {k: c.applied for k, c in applied_cursors.items()} == {"crm": 1, "erp": 2}
        # The dashboard's "remote edits by outcome" reads the same counts from the store.
        assert reconcile_outcomes(w.project.state) == {"crm": {"merged": 1}, "erp": {"merged": 2}}
        second = tick(instance, resources, first.cursor)
        assert not second.run_requests
        assert "no new changes" in str(second.skip_reason)

        w.settle()
        w.assert_converged("s1", record(name="ERP name", status="paused", category="crm"))


def test_a_run_starts_from_the_applied_cursor_and_stops_at_its_range(
    settings: Settings, tmp_path: Path
) -> None:
    """A run that failed leaves its changes to the next run of the system; a run never goes
    past the end of the range it was launched for."""
    with dagster_world(settings, tmp_path, "manual") as (w, resources, instance):
        seeded(w)
        w.update("s1", 1, amount="12.00")
        w.remote_edit("erp", "s1", 2, amount="15.00")
        w.remote_edit("erp", "s1", 3, name="Later")
        partial = reconcile_job.execute_in_process(
            run_config=run_config("erp", 0, 1), instance=instance, resources=resources
        )
        assert partial.success
        assert output_metadata(partial, "apply_resolutions")["outcome.queued"] == 1
        assert output_metadata(partial, "advance_feed_cursor")["applied_cursor"] == 1

        # launched for (1, 2] but after a failed run of (0, 1]: starts where the state says
        with w.project.state.begin() as conn:
            conn.execute(st.feed_cursors.update().values(applied=0))
        rest = reconcile_job.execute_in_process(
            run_config=run_config("erp", 1, 2), instance=instance, resources=resources
        )
        assert rest.success
        fetched = output_metadata(rest, "fetch_remote_changes")
        assert (fetched["cursor_from"], fetched["cursor_to"], fetched["changes"]) == (0, 2, 2)
        applied = output_metadata(rest, "apply_resolutions")
        assert (applied["outcome.already_applied"], applied["outcome.queued"]) == (1, 1)
        (queued,) = st.list_conflicts(w.project.state)
        assert queued.remote["name"] == "Later"  # type: ignore[index]


def test_the_sensor_skips_when_no_system_has_a_feed(settings: Settings, tmp_path: Path) -> None:
    with (
        world(settings, tmp_path, {"strategy": "manual"}, ("accounting",)),
        dg.instance_for_test() as instance,
    ):
        resources = {
            "settings": ExportSettings.from_settings(settings),
            "destinations": DestinationsResource(path=str(tmp_path / "destinations.toml")),
        }
        result = tick(instance, resources, None)
    assert not result.run_requests
    assert "no system with a change feed" in str(result.skip_reason)


def test_the_project_definitions_hold_the_job_the_sensor_and_their_resources(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "destinations.toml").write_text("")
    policies = tmp_path / "conflicts.toml"
    policies.write_text('[destinations.crm]\nstrategy = "manual"\n')
    monkeypatch.setenv("SUBSCRIPTION_EXPORT_DESTINATIONS", str(tmp_path / "destinations.toml"))
    monkeypatch.setenv("SUBSCRIPTION_EXPORT_CONFLICTS", str(policies))
    defs = build_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("reconcile")
    assert [node.name for node in job.graph.nodes_in_topological_order] == [
        "fetch_remote_changes",
        "load_sync_states",
        "resolve_changes",
        "apply_resolutions",
        "push_to_remote",
        "advance_feed_cursor",
    ]
    sensor = defs.resolve_sensor_def("external_changes_sensor")
    assert sensor.job_name == "reconcile"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    loaded = defs.resources["conflict_policies"].load()  # type: ignore[union-attr]
    assert loaded.for_destination("crm").strategy.value == "manual"
    assert defs.resolve_sensor_def("change_log_sensor").job_name == "export_window"


def test_a_push_left_waiting_for_the_delivery_gets_a_run_without_a_new_feed_change(
    settings: Settings, tmp_path: Path
) -> None:
    """The ERP's user sets past_due while the app renames the record; the reconcile merges both
    but its push must wait for the delivery of the rename, which then overwrites the ERP with
    `active`. No later ERP edit comes: the sensor must still start a run for the push."""
    with dagster_world(settings, tmp_path, "last_writer_wins") as (w, resources, instance):
        seeded(w)
        w.update("s1", 1, name="Renamed")
        w.remote_edit("erp", "s1", 2, status="past_due")
        first = tick(instance, resources, None)
        (request,) = [r for r in first.run_requests or [] if r.run_key.startswith("erp")]
        run = reconcile_job.execute_in_process(
            run_config=request.run_config, instance=instance, resources=resources
        )
        assert output_metadata(run, "push_to_remote")["push_deferred"] == 1
        w.deliver()  # the rename reaches the ERP, and with it status `active` again
        assert w.remote_record("erp", "s1")["status"] == "active"  # type: ignore[index]

        second = tick(instance, resources, first.cursor)
        (due,) = second.run_requests or []
        assert due.run_key == "erp:1-1:push-1-0" and due.tags[SYSTEM_TAG] == "erp"
        run = reconcile_job.execute_in_process(
            run_config=due.run_config, instance=instance, resources=resources
        )
        assert output_metadata(run, "fetch_remote_changes")["changes"] == 0
        assert output_metadata(run, "push_to_remote")["pushed"] == 1
        w.assert_converged("s1", record(name="Renamed", status="past_due"))
        third = tick(instance, resources, second.cursor)
        assert not third.run_requests  # nothing due any more


def test_run_once_is_a_whole_cycle_export_deliver_reconcile_push(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --once` (`run_cycle`) brings the ERP's edit back and the next cycle delivers the
    write-back to the CRM: no sensor, no separate command."""
    from subscription_export.defs.runner import run_cycle

    monkeypatch.setenv("SUBSCRIPTION_EXPORT_DESTINATIONS", str(tmp_path / "destinations.toml"))
    monkeypatch.setenv("SUBSCRIPTION_EXPORT_CONFLICT_STRATEGY", "last_writer_wins")
    with dagster_world(settings, tmp_path, "last_writer_wins") as (w, _resources, instance):
        w.insert("s1")
        run_cycle(settings, instance=instance)
        w.remote_edit("erp", "s1", 1, status="past_due")
        first = run_cycle(settings, instance=instance)
        assert w.source_record("s1")["status"] == "past_due"  # type: ignore[index]
        second = run_cycle(settings, instance=instance)
        w.assert_converged("s1", record(status="past_due"))
        assert [r.summary()["changes"] for r in first.reconciled] == [1, 0]  # erp, crm
        assert not first.reconcile_failed and [r.success for r in second.runs] == [True]


def _fail_run(
    request: dg.RunRequest, instance: dg.DagsterInstance, resources: Mapping[str, Any]
) -> None:
    """Launch the request as the daemon would (its run key as a tag); it fails at the end."""
    import subscription_export.defs.reconcile as wiring

    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("worker lost before the cursor was saved")

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(wiring, "advance", crash)
        run = reconcile_job.execute_in_process(
            run_config=request.run_config,
            instance=instance,
            resources=resources,
            tags={**request.tags, "dagster/run_key": request.run_key},
            raise_on_error=False,
        )
    assert not run.success


def test_a_failed_run_is_retried_under_a_new_key_without_a_new_feed_change(
    settings: Settings, tmp_path: Path
) -> None:
    """A run died before saving its cursor and no later ERP edit comes: the next tick asks for
    the unapplied range again (a key the daemon has not seen); three failures in a row stop
    the retries, and the sensor says why."""
    with dagster_world(settings, tmp_path, "last_writer_wins") as (w, resources, instance):
        seeded(w)
        w.remote_edit("erp", "s1", 1, status="paused")
        first = tick(instance, resources, None)
        (request,) = [r for r in first.run_requests or [] if r.run_key.startswith("erp")]
        _fail_run(request, instance, resources)

        second = tick(instance, resources, first.cursor)
        (retry,) = second.run_requests or []
        assert retry.run_key != request.run_key and retry.run_key.startswith("erp:0-1:after-")
        assert retry.run_config == run_config("erp", 0, 1)
        _fail_run(retry, instance, resources)
        third = tick(instance, resources, second.cursor)
        (again,) = third.run_requests or []
        assert again.run_key not in (request.run_key, retry.run_key)
        _fail_run(again, instance, resources)

        stopped = tick(instance, resources, third.cursor)
        assert not stopped.run_requests
        assert "erp: 3 reconcile runs failed in a row" in str(stopped.skip_reason)

        run = reconcile_job.execute_in_process(  # an operator re-runs it after a fix
            run_config=again.run_config, instance=instance, resources=resources, tags=again.tags
        )
        assert run.success
        assert st.all_cursors(w.project.state)["erp"].applied == 1
        assert not tick(instance, resources, stopped.cursor).run_requests
        w.settle()
        w.assert_converged("s1", record(status="paused"))
