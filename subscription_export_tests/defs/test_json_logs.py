"""Structured logs: JSON lines with run id, window and consumer, from a real Dagster run on an
instance configured as `deploy/dagster.postgres.yaml` documents, and the CLI's own formatter."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dagster as dg
import pytest
import yaml

from subscription_export.core.logs import JsonLogFormatter
from subscription_export.core.settings import Settings
from subscription_export.defs.logs import consumer_of_step
from subscription_export.defs.runner import materialize_windows
from subscription_export.export.cut import cut_windows
from subscription_export.runtime import Project
from subscription_export_tests.helpers import insert, writer

REPO = Path(__file__).resolve().parents[2]


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_dagster_run_events_are_json_lines_with_run_window_and_consumer(
    settings: Settings, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    deployed = yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"python_logs": deployed["python_logs"]}))
    with writer(settings.source_url).begin() as conn:
        for i in range(20):
            insert(conn, f"s{i}")
    [window] = cut_windows(Project(settings)).new_windows
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = materialize_windows(settings, [window], instance=instance)
    assert run.success, run.error

    lines = _json_lines(capfd.readouterr().err)
    ours = [line for line in lines if line.get("run_id") == run.run_id]
    assert ours, "no JSON line of the run on stderr"
    assert all(line["window"] == window.key for line in ours)
    consumers = {line.get("consumer") for line in ours}
    assert {"parquet", "csv", "jsonl"} <= consumers
    started = [line for line in ours if line.get("event") == "STEP_START"]
    assert {line["step"] for line in started} >= {"subscription_changes"}
    exporting = next(line for line in ours if "exporting LSNs" in str(line["message"]))
    assert exporting["message"] == f"exporting LSNs {window.lo}..{window.hi} (20 changes)"
    assert exporting["level"] == "info" and str(exporting["ts"]).endswith("Z")


def test_formatter_masks_credentials_and_keeps_context() -> None:
    record = logging.LogRecord(
        "subscription_export.x", logging.WARNING, __file__, 1, "cannot reach %s", None, None
    )
    record.args = ("postgresql://export:hunter2@db/state",)
    record.window = "00000000000000000001-00000000000000000010"
    record.consumer = "erp"
    line = json.loads(JsonLogFormatter().format(record))
    assert "hunter2" not in line["message"]
    assert line["window"] == record.window and line["consumer"] == "erp"
    assert line["level"] == "warning" and line["logger"] == "subscription_export.x"


@pytest.mark.parametrize(
    ("step", "consumer"),
    [
        ("subscription_changes", "parquet"),
        ("subscription_changes_csv", "csv"),
        ("subscription_changes_jsonl", "jsonl"),
        ("acct_sync", "acct"),
        ("reconcile_erp", None),
        (None, None),
    ],
)
def test_consumer_of_step(step: str | None, consumer: str | None) -> None:
    assert consumer_of_step(step) == consumer


def test_consumer_of_a_table_whose_name_is_not_an_asset_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`plan-items` is exported as `plan_items_changes*` but its consumers (watermarks,
    /metrics labels, `status`) are `plan-items.*`: a log line must carry the same name, or
    it cannot be matched with the metric that went wrong."""
    monkeypatch.setenv("SUBSCRIPTION_EXPORT_TABLES", "subscriptions,plan-items")
    assert consumer_of_step("plan_items_changes") == "plan-items.parquet"
    assert consumer_of_step("plan_items_changes_csv") == "plan-items.csv"
    assert consumer_of_step("subscription_changes_jsonl") == "jsonl"
