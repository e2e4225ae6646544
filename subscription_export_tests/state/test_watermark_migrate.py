"""Switching `WATERMARK_URL` between the state DB and Redis no longer starts every consumer at 0:
`watermarks migrate` copies them, max wins, idempotent (issue 12, item 14). Real Redis (a key
namespace of its own) and a real SQLite state DB, through the CLI as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from subscription_export.core.db import engine_for
from subscription_export.source.demo_table import create_demo_table
from subscription_export.state.watermarks import SqlWatermarkStore, watermark_store
from subscription_export_tests.cli_run import run_cli


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(args, None, cwd, check=False, env=env)


def test_watermarks_migrate_sql_to_redis_and_back(tmp_path: Path, redis_url: str) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    env = {
        "SUBSCRIPTION_EXPORT_SOURCE_URL": f"sqlite:///{tmp_path / 'source.db'}",
        "SUBSCRIPTION_EXPORT_STATE_URL": state_url,
    }
    create_demo_table(engine_for(env["SUBSCRIPTION_EXPORT_SOURCE_URL"], writer=True))
    assert _cli(["init"], env, tmp_path).returncode == 0
    sql = SqlWatermarkStore(engine_for(state_url, writer=True))
    assert sql.compare_and_set("erp", 0, 42) and sql.compare_and_set("parquet", 0, 17)
    redis = watermark_store(redis_url, sql.engine)
    assert redis.compare_and_set("parquet", 0, 20) and redis.compare_and_set("csv", 0, 5)

    # SQL → Redis (the configured store): the state DB is the default source.
    on_redis = {**env, "SUBSCRIPTION_EXPORT_WATERMARK_URL": redis_url}
    moved = _cli(["watermarks", "migrate", "--json"], on_redis, tmp_path)
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert {m["consumer"]: (m["before"], m["after"]) for m in report["moves"]} == {
        "erp": (0, 42),
        "parquet": (20, 20),  # never lowered: the higher watermark wins
    }
    assert redis.all() == {"csv": 5, "erp": 42, "parquet": 20}
    again = _cli(["watermarks", "migrate"], on_redis, tmp_path)
    assert again.returncode == 0 and "moved 0 of 2 watermark(s)" in again.stdout, again.stdout
    listed = _cli(["watermarks", "list", "--json"], on_redis, tmp_path)
    assert json.loads(listed.stdout)["watermarks"] == {"csv": 5, "erp": 42, "parquet": 20}

    # Redis → SQL, both named.
    back = _cli(["watermarks", "migrate", "--from", redis_url, "--to", state_url], env, tmp_path)
    assert back.returncode == 0, back.stderr
    assert "erp 42 (kept)" in back.stdout and "parquet 17 → 20" in back.stdout, back.stdout
    assert "csv 0 → 5" in back.stdout and "moved 2 of 3 watermark(s)" in back.stdout
    assert sql.all() == {"csv": 5, "erp": 42, "parquet": 20}


def test_watermarks_migrate_refuses_bad_or_missing_stores(tmp_path: Path) -> None:
    env = {
        "SUBSCRIPTION_EXPORT_SOURCE_URL": f"sqlite:///{tmp_path / 'source.db'}",
        "SUBSCRIPTION_EXPORT_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
    }
    create_demo_table(engine_for(env["SUBSCRIPTION_EXPORT_SOURCE_URL"], writer=True))
    assert _cli(["init"], env, tmp_path).returncode == 0
    bad = _cli(["watermarks", "migrate", "--to", "redis://:pw@127.0.0.1:6379/9x"], env, tmp_path)
    assert bad.returncode == 2 and "database '9x' is not a number" in bad.stderr
    assert ":pw@" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    same = _cli(["watermarks", "migrate"], env, tmp_path)
    assert same.returncode == 2 and "the same store" in same.stderr
    typo = tmp_path / "stat.db"
    missing = _cli(
        ["watermarks", "migrate", "--from", f"sqlite:///{typo}", "--to", "redis://127.0.0.1:1/0"],
        env,
        tmp_path,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr and not typo.exists()
