"""The CLI against object storage (moto's S3 in server mode), as a user runs it: `run --once`
exporting to s3://, `verify` there (and its drift), `export --out s3://…`; credentials only
from the environment and never printed."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from subscription_export.core.settings import Settings
from subscription_export_tests.cli_run import run_cli as _run
from subscription_export_tests.formats.test_object_storage import (
    _bucket_and_key,
    s3_keys,
    s3_object,
    source_settings,
    write_changes,
)

SECRET = "s3cr3t-never-shown"
# Credentials through the documented JSON variable (moto takes any key/secret).
OPTIONS = {"SUBSCRIPTION_EXPORT_STORAGE_OPTIONS": json.dumps({"key": "id", "secret": SECRET})}


@pytest.fixture
def s3_settings(tmp_path: Path, s3_url: str) -> Settings:
    settings = source_settings(tmp_path, s3_url)
    write_changes(settings)
    return settings


def test_run_once_exports_windows_to_s3_and_verify_checks_them(
    s3_settings: Settings, s3_url: str, tmp_path: Path
) -> None:
    run = _run(["run", "--once", "--json"], s3_settings, tmp_path, env=OPTIONS)
    summary = json.loads(run.stdout)
    assert [r["success"] for r in summary["runs"]] == [True, True]
    keys = [r["window"] for r in summary["runs"]]
    assert s3_keys(s3_url) == sorted(
        [f"{asset}/{key}.{ext}" for key in keys for asset, ext in _ASSETS]
        + [f"_manifests/{asset}/{key}.json" for key in keys for asset, _ in _ASSETS]
    )
    status = _run(["status", "--json"], s3_settings, tmp_path, env=OPTIONS)
    assert json.loads(status.stdout)["export_dir"] == s3_url
    verify = _run(["verify"], s3_settings, tmp_path, env=OPTIONS)
    assert "6/6 file(s) match their manifests" in verify.stdout

    jsonl = f"{s3_url}/subscription_changes_jsonl/{keys[1]}.jsonl"
    bucket, key = _bucket_and_key(jsonl)
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=b"{}\n")
    drift = _run(["verify"], s3_settings, tmp_path, check=False, env=OPTIONS)
    assert drift.returncode != 0
    shown = " ".join(drift.stdout.split())  # rich wraps long lines
    assert f"subscription_changes_jsonl/{keys[1]}.jsonl differs from its manifest" in shown
    assert "5/6 file(s) match their manifests" in shown
    for result in (run, status, verify, drift):
        assert SECRET not in result.stdout + result.stderr


_ASSETS = [
    ("subscription_changes", "parquet"),
    ("subscription_changes_csv", "csv"),
    ("subscription_changes_jsonl", "jsonl"),
]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_out_s3_writes_the_bytes_a_local_out_gets(
    s3_settings: Settings, s3_url: str, tmp_path: Path, fmt: str
) -> None:
    args = ["export", "--from-lsn", "3", "--to-lsn", "61", "--format", fmt, "--json"]
    local = tmp_path / f"range.{fmt}"
    _run([*args, "--out", str(local)], s3_settings, tmp_path)
    remote = f"{s3_url}/adhoc/range.{fmt}"
    result = _run([*args, "--out", remote], s3_settings, tmp_path, env=OPTIONS)
    assert s3_object(remote) == local.read_bytes()
    summary = json.loads(result.stdout)
    assert summary["path"] == remote and summary["bytes"] == local.stat().st_size
    assert SECRET not in result.stdout + result.stderr


def test_bad_storage_options_are_one_line_without_their_value(
    s3_settings: Settings, tmp_path: Path
) -> None:
    bad = {"SUBSCRIPTION_EXPORT_STORAGE_OPTIONS": '{"secret": "' + SECRET + '"'}
    result = _run(["verify"], s3_settings, tmp_path, check=False, env=bad)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("SUBSCRIPTION_EXPORT_STORAGE_OPTIONS is not valid JSON")
    assert SECRET not in result.stdout + result.stderr
