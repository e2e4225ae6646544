"""`subscription-export conflicts …` and the conflict count in `status`, as a user runs them:
the real CLI (in-process, see cli_run.py) against a real SQLite source and state and real
sandbox ERP/CRM/accounting servers. (Reconcile and resolution run on PostgreSQL too in
reconcile/test_reconcile.py.)"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
from subscription_export.delivery.dead_letters import list_dead_letters
from subscription_export.reconcile import sync_state as st
from subscription_export.reconcile.outbox import list_pushes
from subscription_export.source.demo_table import create_demo_table, init_demo_source
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.delivery.test_window_delivery import write_destinations
from subscription_export_tests.reconcile.test_pushes import ERP_DOWN
from subscription_export_tests.reconcile.test_reconcile import World, record, seeded, world


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """SQLite files: one backend keeps these tests short."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    init_demo_source(engine_for(source, writer=True))
    return Settings(
        source_url=source,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
    )


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "SUBSCRIPTION_EXPORT_DESTINATIONS": str(tmp_path / "destinations.toml"),
        "COLUMNS": "200",
    }


def cli(w: World, tmp_path: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    (result,) = clis(w, tmp_path, (args, code))
    return result


def clis(
    w: World, tmp_path: Path, *calls: tuple[tuple[str, ...], int]
) -> list[subprocess.CompletedProcess[str]]:
    """Run CLI calls one after another (in-process: each reads the state as it stands, as the
    side-by-side processes these were did); check each exit code; results in call order."""
    results = []
    for args, code in calls:
        result = run_cli(list(args), w.project.settings, tmp_path, False, _env(tmp_path))
        assert result.returncode == code, f"{args}: {result.stdout}{result.stderr}"
        results.append(result)
    return results


def queue_a_conflict(w: World) -> int:
    """The app and an ERP user change `amount` of s1 differently; `manual` queues it."""
    seeded(w)
    w.update("s1", 1, amount="12.00", name="App name")
    w.remote_edit("erp", "s1", 2, amount=Decimal("15.00"), category="erp")
    w.settle()
    (queued,) = st.list_conflicts(w.project.state)
    return queued.id


def test_a_queued_conflict_is_listed_shown_resolved_and_audited(
    settings: Settings, tmp_path: Path
) -> None:
    with world(settings, tmp_path, {"strategy": "manual"}) as w:
        conflict_id = queue_a_conflict(w)

        log_before = w.change_log("s1")
        refusals = [
            (("show", "999"), "no conflict 999"),
            (("resolve", "999", "--take", "local"), "no conflict 999"),
            (("resolve", str(conflict_id), "--take", "merged"), "needs --set for amount"),
            (("resolve", str(conflict_id), "--take", "local", "--set", "amount=x"), "amount='x'"),
            (("resolve", str(conflict_id), "--take", "merged", "--set", "nope=1"), "--set nope"),
        ]
        listed, table, status, status_text, shown, *refused = clis(
            w,
            tmp_path,
            (("conflicts", "list", "--json"), 0),
            (("conflicts", "list"), 0),
            (("status", "--json"), 0),
            (("status",), 0),
            (("conflicts", "show", str(conflict_id)), 0),
            *((("conflicts", *args), 2) for args, _ in refusals),
        )
        queue = json.loads(listed.stdout)
        assert [(c["id"], c["destination"], c["subscription_id"]) for c in queue] == [
            (conflict_id, "erp", "s1")
        ]
        assert queue[0]["fields"] == ["amount"] and queue[0]["status"] == "open"
        assert queue[0]["local"]["amount"] == "12.0000"
        assert queue[0]["remote"]["amount"] == "15.0000"
        assert "amount" in table.stdout and "1 open conflict(s)" in table.stdout
        report = json.loads(status.stdout)
        assert (report["open_conflicts"], report["open_dead_letters"]) == (1, 0)
        assert report["feed_cursors"]["erp"]["applied"] == 1
        assert "conflicts queued for a person: 1" in status_text.stdout

        lines = shown.stdout.splitlines()
        amount_row = next(line for line in lines if line.split()[1:2] == ["amount"])
        assert "10.0000" in amount_row and "12.0000" in amount_row and "15.0000" in amount_row
        assert "conflict" in amount_row.split("amount", 1)[1]
        assert f"conflicts resolve {conflict_id}" in shown.stdout

        # refused, with one clear line and exit 2: nothing is written, the conflict stays open
        for (_, message), result in zip(refusals, refused, strict=True):
            assert message in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
        assert w.change_log("s1") == log_before
        assert [c.status for c in st.list_conflicts(w.project.state, status=None)] == ["open"]

        resolved = json.loads(
            cli(
                w,
                tmp_path,
                "conflicts",
                "resolve",
                str(conflict_id),
                "--take",
                "merged",
                "--set",
                "amount=13.50",
                "--json",
            ).stdout
        )
        assert resolved["written_back"] is True and resolved["push_planned"] is True
        assert resolved["record"]["amount"] == "13.5000"
        assert resolved["record"]["name"] == "App name" and resolved["record"]["category"] == "erp"
        # the same apply path as the job: a write-back tagged with the system's origin
        assert w.change_log("s1") == [*log_before, ("u", "erp")]

        w.settle()
        w.assert_converged("s1", record(amount=Decimal("13.50"), name="App name", category="erp"))
        keys = [p.idempotency_key for p in list_pushes(w.project.state)]
        assert keys == [f"erp:resolve:s1:{conflict_id}"]
        assert w.system("erp").applications[keys[0]] == 1

        again, history_json, printed, everything, status = clis(
            w,
            tmp_path,
            (("conflicts", "resolve", str(conflict_id), "--take", "local"), 2),
            (("conflicts", "history", "--subscription", "s1", "--json"), 0),
            (("conflicts", "history", "--subscription", "s1"), 0),
            (("conflicts", "list", "--all", "--json"), 0),
            (("status", "--json"), 0),
        )
        assert "already resolved" in again.stderr
        history = json.loads(history_json.stdout)
        assert [(e["outcome"], e["ref"]) for e in history] == [
            ("queued", "feed:1"),
            ("resolved", f"conflict:{conflict_id}"),
        ]
        assert history[1]["detail"]["take"] == "merged"
        assert history[1]["merged"]["amount"] == "13.5000"
        assert history[0]["base"]["amount"] == "10.0000"
        assert "queued" in printed.stdout and "resolved" in printed.stdout
        assert "2 decision(s)" in printed.stdout
        assert [c["status"] for c in json.loads(everything.stdout)] == ["resolved"]
        assert json.loads(status.stdout)["open_conflicts"] == 0


def test_take_remote_applies_the_erp_record_and_take_local_keeps_the_source(
    settings: Settings, tmp_path: Path
) -> None:
    with world(settings, tmp_path, {"strategy": "manual"}) as w:
        conflict_id = queue_a_conflict(w)
        cli(w, tmp_path, "conflicts", "resolve", str(conflict_id), "--take", "remote")
        w.settle()
        w.assert_converged("s1", record(amount=Decimal("15.00"), name="App name", category="erp"))

        w.update("s1", 3, amount="16.00")
        w.remote_edit("erp", "s1", 4, amount=Decimal("17.00"))
        w.settle()
        (second,) = st.list_conflicts(w.project.state)
        cli(w, tmp_path, "conflicts", "resolve", str(second.id), "--take", "local")
        w.settle()
        w.assert_converged("s1", record(amount=Decimal("16.00"), name="App name", category="erp"))
        outcomes = [
            e["outcome"]
            for e in json.loads(
                cli(w, tmp_path, "conflicts", "history", "--subscription", "s1", "--json").stdout
            )
        ]
        assert outcomes == ["queued", "resolved", "queued", "resolved"]


def test_init_creates_the_sync_tables_and_an_empty_queue_lists_nothing(tmp_path: Path) -> None:
    fresh = Settings(
        source_url=f"sqlite:///{tmp_path / 'fresh.db'}",
        state_url=f"sqlite:///{tmp_path / 'fresh_state.db'}",
        export_dir=tmp_path / "exports",
    )

    def run(*args: str) -> str:
        return run_cli(list(args), fresh, tmp_path).stdout

    create_demo_table(engine_for(fresh.source_url, writer=True))
    run("init")
    tables = set(sa.inspect(engine_for(fresh.state_url)).get_table_names())
    assert {"sync_base", "sync_conflicts", "sync_audit", "sync_pushes"} <= tables
    assert json.loads(run("conflicts", "list", "--json")) == []


def test_a_resolution_whose_push_becomes_a_dead_letter_exits_1_and_says_how_to_replay(
    settings: Settings, tmp_path: Path
) -> None:
    """The ERP refuses the resolution's push for the last time (one attempt allowed): the
    merged record will not reach the ERP until someone replays the dead letter, so the command
    must not exit 0 nor say the next run re-sends it (runs do not re-send dead letters)."""
    one_attempt = settings.model_copy(update={"push_max_attempts": 1})
    with world(one_attempt, tmp_path, {"strategy": "manual"}) as w:
        conflict_id = queue_a_conflict(w)
        write_destinations(
            tmp_path / "destinations.toml", w.servers, read_s=5.0, retry={"max_attempts": 1}
        )
        w.system("erp").set_faults(ERP_DOWN)
        result = cli(
            w, tmp_path, "conflicts", "resolve", str(conflict_id), "--take", "local", code=1
        )
        (letter,) = list_dead_letters(w.project.state, "erp")
        assert letter.idempotency_key == f"erp:resolve:s1:{conflict_id}"
        assert "re-sends" not in result.stderr
        assert "dead letter" in result.stderr
        assert "dead-letters replay --destination erp" in result.stderr
