"""Pushes the remote does not accept: retried by later runs at most `push_max_attempts` times,
then a dead letter of the destination that `dead-letters replay` sends (same key) and the next
run settles. Real SQLite source and state, real sandbox ERP over HTTP."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from subscription_export.core.settings import Settings
from subscription_export.delivery.dead_letters import list_dead_letters
from subscription_export.delivery.window import replay_dead_letters
from subscription_export.reconcile.outbox import list_pushes
from subscription_export.sandbox.faults import FaultPlan, FaultSpec
from subscription_export.status import gather_status
from subscription_export_tests.delivery.test_window_delivery import write_destinations
from subscription_export_tests.reconcile.test_reconcile import HOLDER, World, record, seeded, world

ERP_DOWN = FaultPlan(endpoints={"PUT /subscriptions": FaultSpec(error=1.0, error_statuses=(503,))})
KEY = "erp:reconcile:s1:1"


def _clobbered_edit(w: World, tmp_path: Path) -> None:
    """The ERP's user renames s1; the delivery then overwrites the ERP with the app's update,
    so the merged record has to be pushed back. Then one attempt per run (a refusal is quick)
    and the ERP refuses every PUT."""
    seeded(w)
    w.update("s1", 1, amount="12.00")
    w.remote_edit("erp", "s1", 2, name="ERP name")
    w.deliver()
    w.destinations = write_destinations(
        tmp_path / "one-attempt.toml", w.servers, read_s=5.0, retry={"max_attempts": 1}
    )
    w.system("erp").set_faults(ERP_DOWN)


def test_a_refused_push_is_retried_up_to_the_cap_then_dead_lettered_and_replayable(
    settings: Settings, tmp_path: Path
) -> None:
    with world(settings, tmp_path, {"strategy": "source_wins"}, ("erp",)) as w:
        _clobbered_edit(w, tmp_path)
        erp = w.system("erp")
        cap = 5  # the default of SUBSCRIPTION_EXPORT_PUSH_MAX_ATTEMPTS
        reports = [w.reconcile("erp").pushes for _ in range(cap)]
        (push,) = list_pushes(w.project.state)
        assert (push.status, push.attempts) == ("dead_letter", cap)
        assert [(r.failed, r.dead_lettered) for r in reports] == [(1, 0)] * (cap - 1) + [(0, 1)]
        (letter,) = list_dead_letters(w.project.state, "erp")
        assert (letter.idempotency_key, letter.window_key, letter.subscription_id) == (
            KEY,
            "reconcile",
            "s1",
        )
        assert gather_status(w.project)["open_dead_letters"] == 1
        assert gather_status(w.project)["pending_pushes"] == {}

        report = w.reconcile("erp")  # a dead letter is not sent again by the runs
        assert (report.pushes.failed, report.pushes.dead_lettered, report.pushes.pushed) == (
            0,
            0,
            0,
        )
        erp.set_faults(FaultPlan())
        summary = replay_dead_letters(w.project, w.destinations, HOLDER, destination="erp")
        assert (summary.replayed, summary.failed, summary.completed_windows) == (1, 0, [])
        assert erp.applications[KEY] == 1
        w.reconcile("erp")  # the outbox learns the dead letter's fate
        assert [p.status for p in list_pushes(w.project.state)] == ["sent"]
        w.settle()
        w.assert_converged("s1", record(amount=Decimal("12.00"), name="ERP name"))


def test_status_counts_the_pushes_still_to_send_per_system(
    settings: Settings, tmp_path: Path
) -> None:
    with world(settings, tmp_path, {"strategy": "source_wins"}, ("erp",)) as w:
        _clobbered_edit(w, tmp_path)
        assert w.reconcile("erp").pushes.failed == 1
        assert gather_status(w.project)["pending_pushes"] == {"erp": 1}


def test_pushes_of_one_run_go_out_in_one_batch_request(settings: Settings, tmp_path: Path) -> None:
    """Twelve clobbered ERP edits give twelve pushes; the run sends them in one `$batch`."""
    with world(settings, tmp_path, {"strategy": "source_wins"}, ("erp",)) as w:
        sids = [f"s{n}" for n in range(1, 13)]
        for sid in sids:
            w.insert(sid)
        w.deliver()
        for sid in sids:
            w.update(sid, 1, amount="12.00")
            w.remote_edit("erp", sid, 2, name=f"ERP {sid}")
        w.deliver()
        erp = w.system("erp")
        before = sum(erp.requests_by_status.values())
        report = w.reconcile("erp")
        assert report.pushes.pushed == 12
        feed_pages = 1
        assert sum(erp.requests_by_status.values()) - before == feed_pages + 1
        assert {erp.records[sid]["name"] for sid in sids} == {f"ERP {sid}" for sid in sids}
        assert all(p.status == "sent" for p in list_pushes(w.project.state))
