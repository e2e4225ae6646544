"""The CLI as a user runs it (in-process, see cli_run.py): real files, one clear line on bad
input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster._core.instance.ref import InstanceRef

from subscription_export.core.settings import Settings
from subscription_export.source.demo_table import create_demo_table
from subscription_export_tests.cli_run import run_cli as _run
from subscription_export_tests.helpers import delete, insert, update, writer


def test_run_once_twice_exports_only_new_changes(settings: Settings, tmp_path: Path) -> None:
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        for i in range(30):
            insert(conn, f"s{i}")
    first = json.loads(_run(["run", "--once", "--json"], settings, tmp_path).stdout)
    assert first["last_lsn"] == 30 and all(r["success"] for r in first["runs"])

    with engine.begin() as conn:
        update(conn, "s1", status="cancelled")
        delete(conn, "s2")
        delete(conn, "s3")
    second = json.loads(_run(["run", "--once", "--json"], settings, tmp_path).stdout)
    assert second["new_windows"] == ["00000000000000000031-00000000000000000033"]
    table = pq.read_table(
        settings.export_dir / "subscription_changes" / f"{second['new_windows'][0]}.parquet"
    )
    assert table.column("_op").to_pylist() == ["u", "d", "d"]
    assert table.column("id").to_pylist() == ["s1", "s2", "s3"]

    status = json.loads(_run(["status", "--json"], settings, tmp_path).stdout)
    assert {k: v["watermark"] for k, v in status["consumers"].items()} == {
        "parquet": 33,
        "csv": 33,
        "jsonl": 33,
    }
    # Runs were recorded in the DAGSTER_HOME instance, so the UI shows them.
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "dagster_home")))
    runs = instance.get_runs()
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(
        [r["window"] for r in first["runs"] + second["runs"]]
    )
    assert all(r.is_success for r in runs)


def test_export_range_matches_window_file(settings: Settings, tmp_path: Path) -> None:
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        for i in range(12):
            insert(conn, f"s{i}")
    _run(["run", "--once"], settings, tmp_path)
    key = "00000000000000000001-00000000000000000012"
    for fmt, asset in (
        ("csv", "subscription_changes_csv"),
        ("jsonl", "subscription_changes_jsonl"),
    ):
        out = tmp_path / f"range.{fmt}"
        _run(
            ["export", "--from-lsn", "1", "--to-lsn", "12", "--format", fmt, "--out", str(out)],
            settings,
            tmp_path,
        )
        assert out.read_bytes() == (settings.export_dir / asset / f"{key}.{fmt}").read_bytes()


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["status"], {"SUBSCRIPTION_EXPORT_SOURCE_URL": "not a url"}, "is not a database URL"),
        (["status"], {"SUBSCRIPTION_EXPORT_SOURCE_URL": "mysql://x@y/z"}, "unsupported database"),
        (
            ["status"],
            {"SUBSCRIPTION_EXPORT_SOURCE_URL": "postgresql://nobody@127.0.0.1:1/nowhere"},
            "cannot reach the source database",
        ),
        (["status"], {"SUBSCRIPTION_EXPORT_WINDOW_MAX_CHANGES": "lots"}, "is not a whole number"),
    ],
)
def test_bad_configuration_gives_one_clear_line(
    args: list[str], env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    result = _run(args, None, tmp_path, check=False, env=env)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_source_without_schema_and_range_past_the_end(tmp_path: Path) -> None:
    bare = Settings(
        source_url=f"sqlite:///{tmp_path / 'empty.db'}",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "out",
    )
    result = _run(["status"], bare, tmp_path, check=False)
    assert result.returncode == 2 and "run `subscription-export init` first" in result.stderr
    assert "Traceback" not in result.stderr

    create_demo_table(writer(bare.source_url))
    _run(["init"], bare, tmp_path)
    args = ["export", "--from-lsn", "5", "--to-lsn", "9", "--format", "csv", "--out", "x.csv"]
    result = _run(args, bare, tmp_path, check=False)
    assert result.returncode == 2
    assert "last sequenced LSN is 0" in result.stderr and "Traceback" not in result.stderr
    debug = _run(["--debug", *args], bare, tmp_path, check=False)
    assert "Traceback" in debug.stderr


def test_export_json_summary_describes_the_file(settings: Settings, tmp_path: Path) -> None:
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        for i in range(12):
            insert(conn, f"s{i}")
        delete(conn, "s3")
    _run(["run", "--once"], settings, tmp_path)
    out = tmp_path / "range.parquet"
    args = ["export", "--from-lsn", "2", "--to-lsn", "13", "--format", "parquet"]
    result = _run([*args, "--out", str(out), "--json", "--quiet"], settings, tmp_path)
    summary = json.loads(result.stdout)
    assert summary == {
        "path": str(out),
        "format": "parquet",
        "from_lsn": 2,
        "to_lsn": 13,
        "rows": 12,
        "rows_by_op": {"c": 11, "d": 1},
        "bytes": out.stat().st_size,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "quarantined": 0,
    }
    assert result.stderr == ""  # --quiet: no progress bar, no chatter


@pytest.mark.slow
def test_demo_json_summary(tmp_path: Path) -> None:
    settings = Settings(
        source_url=f"sqlite:///{tmp_path / 'source.db'}",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
    )
    args = ["demo", "--subscriptions", "50", "--changes", "600", "--window-size", "200"]
    summary = json.loads(_run([*args, "--json", "--quiet"], settings, tmp_path).stdout)
    assert summary["changes"]["written"] == 600
    assert summary["new_windows"] == 3
    assert [r["changes"] for r in summary["runs"]] == [200, 200, 200]
    assert all(r["success"] for r in summary["runs"])
    assert {name: c["watermark"] for name, c in summary["consumers"].items()} == {
        name: 600 for name in ("parquet", "csv", "jsonl", "erp", "crm", "accounting")
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--once", "--watch"], "Error: Invalid value: choose --once or --watch, not both"),
        (["status", "--no-such-flag"], "Error: No such option: --no-such-flag"),
        (["dashboard"], "Error: Invalid value: give exactly one of --out FILE or --serve"),
    ],
)
def test_usage_errors_show_click_usage_and_exit_2(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    """typer vendors click, so its usage errors are not `click.ClickException`: they used to
    end as "unexpected error: BadParameter ... (rerun with --debug)" with exit code 1."""
    result = _run(args, None, tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "unexpected error" not in result.stderr


def test_no_command_shows_help_without_an_error(tmp_path: Path) -> None:
    # A child process: click names the program from how Python started it (`-m`).
    result = _run([], None, tmp_path, check=False, in_process=False)
    assert "Usage: python -m subscription_export.cli" in result.stdout
    assert "unexpected error" not in result.stderr


def test_status_lists_every_configured_destination_even_before_it_advanced(
    settings: Settings, tmp_path: Path
) -> None:
    """A destination that never delivered (watermark 0) is listed with its lag, not hidden."""
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        for i in range(5):
            insert(conn, f"s{i}")
    destinations = tmp_path / "destinations.toml"
    destinations.write_text('[destinations.accounting]\nbase_url = "http://127.0.0.1:9"\n')
    _run(["init"], settings, tmp_path)  # status never creates the state DB
    result = _run(
        ["status", "--json"],
        settings,
        tmp_path,
        env={"SUBSCRIPTION_EXPORT_DESTINATIONS": str(destinations)},
    )
    report = json.loads(result.stdout)
    consumers = report["consumers"]
    assert consumers["accounting"]["watermark"] == 0
    assert consumers["accounting"]["lag"] == report["last_lsn"]
    text = _run(
        ["status"], settings, tmp_path, env={"SUBSCRIPTION_EXPORT_DESTINATIONS": str(destinations)}
    ).stdout
    assert "accounting" in text


def test_quarantine_list_prints_hostile_values_as_text(settings: Settings, tmp_path: Path) -> None:
    """A value from data is never read as rich markup nor reaches the terminal raw (it crashed
    with a MarkupError or hid the value)."""
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "s1")
        update(conn, "s1", currency="[/red]\x1b[2J")
    _run(["run", "--once"], settings, tmp_path)
    result = _run(["quarantine", "list"], settings, tmp_path)
    assert "[/red]" in result.stdout
    assert "\x1b" not in result.stdout
