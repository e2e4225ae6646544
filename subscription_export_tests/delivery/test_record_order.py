"""Per-record order around dead letters: the later changes of a record wait behind its dead
letter (held back, recorded as dead letters themselves) and follow it when it is replayed, so
the replay is never refused as stale and the remote ends equal to the source. Real SQLite
and PostgreSQL sources, real sandbox ERP over HTTP."""

from __future__ import annotations

from pathlib import Path

from subscription_export.core.settings import Settings
from subscription_export.delivery.clients import HELD_BACK
from subscription_export.delivery.dead_letters import discard, held_behind, list_dead_letters
from subscription_export.delivery.window import deliver_window, replay_dead_letters
from subscription_export.runtime import Project
from subscription_export.sandbox.faults import FaultPlan, FaultSpec
from subscription_export.sandbox.server import running_sandbox
from subscription_export.state.windows import Window
from subscription_export_tests.delivery.test_window_delivery import (
    HOLDER,
    assert_in_sync,
    export_all,
    small_windows,
    write_destinations,
)
from subscription_export_tests.helpers import insert, update, writer

ERP_DOWN = FaultPlan(endpoints={"PUT /subscriptions": FaultSpec(error=1.0, error_statuses=(503,))})


def _created_then_updated(settings: Settings) -> tuple[Project, Window, Window]:
    """Window 1 creates s1 and s2; window 2 updates s1 twice and s2 once."""
    project = small_windows(settings, size=10)
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "s1", amount="1.00")
        insert(conn, "s2", amount="2.00")
    (first,) = export_all(project)
    with engine.begin() as conn:
        update(conn, "s1", amount="1.50")
    with engine.begin() as conn:
        update(conn, "s1", amount="1.75")
        update(conn, "s2", amount="2.50")
    _, second = export_all(project)
    return project, first, second


def test_later_changes_wait_behind_a_dead_letter_and_follow_its_replay(
    settings: Settings, tmp_path: Path
) -> None:
    project, first, second = _created_then_updated(settings)
    with running_sandbox(("erp",)) as servers:
        erp = servers["erp"]
        config = write_destinations(tmp_path / "d.toml", servers, retry={"max_attempts": 1})
        destination = config.destinations["erp"]
        erp.system.set_faults(ERP_DOWN)
        one = deliver_window(project, destination, first, HOLDER, policy="skip")
        assert (one.status, one.dead_lettered) == ("delivered", 2)
        erp.system.set_faults(FaultPlan())

        two = deliver_window(project, destination, second, HOLDER, policy="skip")
        assert two.status == "delivered" and erp.system.records == {}  # all held back
        letters = list_dead_letters(project.state, "erp")
        assert [(d.subscription_id, d.window_key) for d in letters] == [
            ("s1", first.key),
            ("s2", first.key),
            ("s1", second.key),
            ("s1", second.key),
            ("s2", second.key),
        ]
        assert {d.error for d in letters if d.window_key == second.key} == {HELD_BACK}

        erp.system.set_faults(ERP_DOWN)  # a replay that fails again keeps the rest held
        failed = replay_dead_letters(project, config, HOLDER, destination="erp", policy="skip")
        assert failed.replayed == 0
        assert [r.attempts for r in failed.results] == [1, 1, 0, 0, 0]
        erp.system.set_faults(FaultPlan())

        replayed = replay_dead_letters(project, config, HOLDER, destination="erp", policy="skip")
        assert (replayed.replayed, replayed.failed) == (5, 0)
        assert list_dead_letters(project.state, "erp") == []
        assert_in_sync(project, {"erp": erp})


def test_discarding_a_dead_letter_sends_the_changes_held_behind_it(
    settings: Settings, tmp_path: Path
) -> None:
    project, first, second = _created_then_updated(settings)
    with running_sandbox(("erp",)) as servers:
        erp = servers["erp"]
        config = write_destinations(tmp_path / "d.toml", servers, retry={"max_attempts": 1})
        destination = config.destinations["erp"]
        erp.system.set_faults(ERP_DOWN)
        deliver_window(project, destination, first, HOLDER, policy="skip")
        erp.system.set_faults(FaultPlan())
        deliver_window(project, destination, second, HOLDER, policy="skip")

        created = {
            d.subscription_id: d.id
            for d in list_dead_letters(project.state, "erp", window_key=first.key)
        }
        assert discard(project.state, [created["s2"]]) == 1
        behind = held_behind(project.state, [created["s2"]])
        assert [d.subscription_id for d in list_dead_letters(project.state, ids=behind)] == ["s2"]
        summary = replay_dead_letters(project, config, HOLDER, ids=behind, policy="skip")
        assert summary.replayed == 1
        assert erp.system.records["s2"]["amount"] == "2.5000"  # the held update, a full image
