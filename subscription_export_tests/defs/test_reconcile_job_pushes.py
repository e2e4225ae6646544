"""A `reconcile` run of the daemon whose push is refused for the last time (it becomes a
dead letter: the merged record never reaches the system until someone acts) must not end
SUCCESS: `subscription-export reconcile` exits 1 for the same outcome. Ephemeral instance,
real sandbox ERP, real SQLite source."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
from subscription_export.defs.destinations import DestinationsResource
from subscription_export.defs.reconcile import ConflictPoliciesResource, reconcile_job, run_config
from subscription_export.defs.resources import ExportSettings
from subscription_export.delivery.dead_letters import list_dead_letters
from subscription_export.reconcile import sync_state as st
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.reconcile.test_pushes import _clobbered_edit
from subscription_export_tests.reconcile.test_reconcile import world


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    init_demo_source(engine_for(source, writer=True))
    return Settings(
        source_url=source,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
        push_max_attempts=1,  # the first refusal makes the push a dead letter
    )


def test_a_run_that_dead_letters_a_push_fails_after_advancing_the_cursor(
    settings: Settings, tmp_path: Path
) -> None:
    with world(settings, tmp_path, {"strategy": "source_wins"}, ("erp",)) as w:
        _clobbered_edit(w, tmp_path)  # the ERP refuses every PUT from now on
        resources = {
            "settings": ExportSettings.from_settings(settings),
            "destinations": DestinationsResource(path=str(tmp_path / "one-attempt.toml")),
            "conflict_policies": ConflictPoliciesResource(strategy="source_wins"),
        }
        with dg.instance_for_test() as instance:
            run = reconcile_job.execute_in_process(
                run_config=run_config("erp", 0, None),
                instance=instance,
                resources=resources,
                raise_on_error=False,
            )
        (letter,) = list_dead_letters(w.project.state, "erp")
        assert letter.window_key == "reconcile"
        assert st.all_cursors(w.project.state)["erp"].applied == 1  # the edit is applied
        assert not run.success  # ...but the merged record is not in the ERP: no success
        failures = [e for e in run.all_events if e.is_step_failure]
        assert "dead letter" in str(failures[0].step_failure_data.error), failures
