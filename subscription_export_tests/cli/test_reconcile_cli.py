"""`subscription-export reconcile [--system S] [--json]`: per system what came back and what
was pushed; exit 1 when a push failed. Real CLI process, SQLite, sandbox ERP over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
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
