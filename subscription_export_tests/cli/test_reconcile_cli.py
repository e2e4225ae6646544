"""`subscription-export reconcile [--system S] [--json]`: per system what came back and what
was pushed; exit 1 when a push failed. Real CLI process, SQLite, sandbox ERP over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
from subscription_export.reconcile.apply import INVALID_SHOWN
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.cli_run import run_cli as _run
from subscription_export_tests.reconcile.test_pushes import _clobbered_edit
from subscription_export_tests.reconcile.test_reconcile import record, seeded, world


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    init_demo_source(engine_for(source, writer=True))
    return Settings(
        source_url=source,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
    )


def test_reconcile_prints_per_system_counts_as_json(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}, ("erp", "crm")) as w:
        monkeypatch.setenv("SUBSCRIPTION_EXPORT_DESTINATIONS", str(tmp_path / "destinations.toml"))
        seeded(w)
        w.remote_edit("erp", "s1", 1, status="past_due")
        out = _run(["reconcile", "--system", "erp", "--json"], settings, tmp_path)
        (erp,) = json.loads(out.stdout)
        assert {k: erp[k] for k in ("system", "changes", "applied", "conflicts_queued")} == {
            "system": "erp",
            "changes": 1,
            "applied": 1,
            "conflicts_queued": 0,
        }
        assert (erp["pushes_failed"], erp["pushes_dead_lettered"], erp["errors"]) == (0, 0, None)
        assert w.source_record("s1") == record(status="past_due")


def test_reconcile_exits_1_when_a_push_is_refused(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with world(settings, tmp_path, {"strategy": "source_wins"}, ("erp",)) as w:
        _clobbered_edit(w, tmp_path)  # the ERP refuses every PUT from now on
        monkeypatch.setenv("SUBSCRIPTION_EXPORT_DESTINATIONS", str(tmp_path / "one-attempt.toml"))
        monkeypatch.setenv("SUBSCRIPTION_EXPORT_CONFLICT_STRATEGY", "source_wins")
        result = _run(["reconcile"], settings, tmp_path, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "1 failed, 0 dead-lettered" in result.stdout
        assert "push refused" in result.stderr and "erp:reconcile:s1:1" in result.stderr


def test_reconcile_reports_a_remote_id_that_is_no_key_as_invalid_and_exits_0(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ERP record whose id no row can have (longer than the state tables hold) is counted
    `invalid` and named with its cursor and reason, escaped (remote data: rich markup and
    control characters shown as text); the real edit next to it applies; exit status 0, as
    for an `invalid` field value."""
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}, ("erp",)) as w:
        monkeypatch.setenv("SUBSCRIPTION_EXPORT_DESTINATIONS", str(tmp_path / "destinations.toml"))
        seeded(w)
        erp = w.system("erp")
        for n, ident in enumerate(("[red]x" + "y" * 250, "[bold]\x1b[2J" + "z" * 250)):
            with erp._lock:
                erp._records[ident] = {**erp._records["s1"], "id": ident}
            w.remote_edit("erp", ident, 1 + n, name="hostile")
            w.remote_edit("erp", "s1", 1 + n, status=("past_due", "paused")[n])
            if n == 0:
                out = _run(["reconcile", "--system", "erp", "--json"], settings, tmp_path)
                (shown,) = json.loads(out.stdout)
                assert (shown["changes"], shown["applied"], shown["invalid"]) == (2, 1, 1)
                (bad,) = shown["invalid_changes"]
                assert bad["cursor"] == 1 and "longer than 200 characters" in bad["reason"]
                assert w.source_record("s1") == record(status="past_due")
        result = _run(["reconcile", "--system", "erp"], settings, tmp_path)
        assert "2 change(s), 1 applied, 0 conflict(s) queued, 1 invalid;" in result.stdout
        assert "invalid change at cursor 3: column 'id' (text key): id '[bold]\\x1b[2J" in (
            " ".join(result.stderr.split())
        )
        assert "\x1b[2J" not in result.stderr
        assert w.source_record("s1") == record(status="paused")


def test_reconcile_lists_the_first_invalid_changes_and_counts_the_rest(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More `invalid` changes than a summary lists: the first are printed, the rest counted
    (every one is in the audit log); exit status 0."""
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}, ("erp",)) as w:
        monkeypatch.setenv("SUBSCRIPTION_EXPORT_DESTINATIONS", str(tmp_path / "destinations.toml"))
        seeded(w)
        for n in range(INVALID_SHOWN + 3):
            w.remote_edit("erp", "s1", 1, name=f"nul\x00{n}")  # PostgreSQL text holds no NUL
        result = _run(["reconcile", "--system", "erp"], settings, tmp_path)
        assert f"{INVALID_SHOWN + 3} invalid;" in result.stdout
        listed = result.stderr.count("invalid change at cursor")
        assert listed == INVALID_SHOWN, result.stderr
        assert "3 more invalid change(s)" in " ".join(result.stderr.split())
