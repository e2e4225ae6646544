"""Exports to object storage (moto's S3 in server mode): the same bytes as on local disk,
streamed, atomic without rename (object first, manifest last), and readers that trust only a
manifest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from upath import UPath

from subscription_export.core.db import engine_for
from subscription_export.core.errors import UnpublishedFileError
from subscription_export.core.settings import Settings, replace
from subscription_export.export import flow
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.formats.storage import BLOCK_SIZE
from subscription_export.formats.verify import verify_exports
from subscription_export.formats.writers import FORMATS, write_atomically
from subscription_export.runtime import Project
from subscription_export.source.demo_table import init_demo_source
from subscription_export.state.progress import completed_keys
from subscription_export.state.windows import Window, list_windows
from subscription_export_tests.helpers import delete, insert, update, writer


def _bucket_and_key(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def s3_object(url: str) -> bytes:
    bucket, key = _bucket_and_key(url)
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def s3_keys(url: str) -> list[str]:
    bucket, prefix = _bucket_and_key(url)
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"].removeprefix(prefix).lstrip("/") for o in listed.get("Contents", []))


def source_settings(tmp_path: Path, export_dir: str | Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    init_demo_source(engine_for(url, writer=True))
    return Settings(
        source_url=url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=export_dir,
        window_max_changes=40,
        window_max_age_s=0.0,
        read_batch_size=16,
    )


def write_changes(settings: Settings, count: int = 60) -> None:
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        for i in range(count):
            insert(conn, f"s{i}", amount=f"{i}.25", name=f'Plan "{i}", =1+1')
    with engine.begin() as conn:
        update(conn, "s1", status="paused")
        delete(conn, "s2")


@pytest.fixture
def s3_settings(tmp_path: Path, s3_url: str) -> Settings:
    settings = source_settings(tmp_path, s3_url)
    write_changes(settings)
    return settings


def export_everything(project: Project) -> list[Window]:
    cut_windows(project)
    windows = list_windows(project.state)
    for window in windows:
        for fmt in FORMATS:
            export_window_file(project, fmt, window, holder="test")
    return windows


def test_windows_on_s3_have_the_bytes_and_manifests_of_local_ones(
    s3_settings: Settings, tmp_path: Path, s3_url: str
) -> None:
    on_s3 = Project(s3_settings)
    windows = export_everything(on_s3)
    local = Project(replace(s3_settings, export_dir=tmp_path / "local"))
    local.settings.export_dir.mkdir()
    # A second state DB: the local export does not see the S3 one's progress.
    local = Project(replace(local.settings, state_url=f"sqlite:///{tmp_path / 'local.db'}"))
    export_everything(local)
    assert len(windows) == 2
    for window in windows:
        for fmt in FORMATS:
            relative = on_s3.file_path(fmt, window.key).relative_to(on_s3.settings.export_dir)
            assert (
                s3_object(f"{s3_url}/{relative}")
                == (local.settings.export_dir / relative).read_bytes()
            )
    for manifest in (tmp_path / "local" / "_manifests").rglob("*.json"):
        relative = manifest.relative_to(tmp_path / "local").as_posix()
        remote = json.loads(s3_object(f"{s3_url}/{relative}"))
        here = json.loads(manifest.read_text())
        assert remote["content_sha256"] == here["content_sha256"]
        assert remote["file"] == here["file"]
    assert verify_exports(on_s3.settings.export_dir).passed


def test_re_exporting_a_window_to_s3_gives_the_same_bytes_and_manifest_hash(
    s3_settings: Settings, s3_url: str
) -> None:
    project = Project(s3_settings)
    windows = export_everything(project)
    first = {key: s3_object(f"{s3_url}/{key}") for key in s3_keys(s3_url)}
    again = Project(replace(s3_settings, read_batch_size=7))
    for window in windows:
        for fmt in FORMATS:
            export_window_file(again, fmt, window, holder="test")
    second = {key: s3_object(f"{s3_url}/{key}") for key in s3_keys(s3_url)}
    assert set(first) == set(second)
    for key, body in first.items():
        if key.startswith("_manifests/"):
            drop = {"produced_at"}
            assert {k: v for k, v in json.loads(body).items() if k not in drop} == {
                k: v for k, v in json.loads(second[key]).items() if k not in drop
            }
        else:
            assert body == second[key], key


def test_verify_on_s3_finds_a_changed_object(s3_settings: Settings, s3_url: str) -> None:
    project = Project(s3_settings)
    windows = export_everything(project)
    assert (
        verify_exports(project.settings.export_dir).summary == "6/6 file(s) match their manifests"
    )
    csv = f"{s3_url}/subscription_changes_csv/{windows[0].key}.csv"
    bucket, key = _bucket_and_key(csv)
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=s3_object(csv) + b"x")
    report = verify_exports(UPath(s3_url))
    assert not report.passed
    failed = [o.description for o in report.outcomes if not o.passed]
    assert failed == [f"subscription_changes_csv/{windows[0].key}.csv differs from its manifest"]


def test_verify_on_s3_reports_a_window_whose_objects_all_expired(
    s3_settings: Settings, s3_url: str, tmp_path: Path
) -> None:
    """A lifecycle rule (or a deleted prefix) removes a window's files and manifests alike:
    nothing under the export dir shows the window ever existed, but the state database
    recorded its export, so `verify` must not print "4/4 match" and exit 0."""
    from subscription_export_tests.cli_run import run_cli

    windows = export_everything(Project(s3_settings))
    assert len(windows) == 2
    gone = windows[0].key
    bucket, prefix = _bucket_and_key(s3_url)
    s3 = boto3.client("s3")
    for key in s3_keys(s3_url):
        if gone in key:
            s3.delete_object(Bucket=bucket, Key=f"{prefix}/{key}")
    result = run_cli(["verify"], s3_settings, tmp_path, check=False)
    assert result.returncode == 1, result.stdout
    text = " ".join(result.stdout.split())
    assert "3/6 file(s) match their manifests" in text
    for asset in ("subscription_changes", "subscription_changes_csv", "subscription_changes_jsonl"):
        assert f"{asset}/{gone}: recorded as exported, but its file and manifest are missing" in (
            text
        )


class Crash(Exception):
    """Stands for the process dying at this point."""


def test_a_crash_between_object_and_manifest_leaves_an_object_nobody_trusts(
    s3_settings: Settings, s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = Project(s3_settings)
    cut_windows(project)
    window = list_windows(project.state)[0]

    def crash(*_args: object, **_kwargs: object) -> None:
        raise Crash

    with monkeypatch.context() as patched:
        patched.setattr(flow, "write_manifest", crash)
        with pytest.raises(Crash):
            export_window_file(project, "parquet", window, holder="test")
    orphan = f"subscription_changes/{window.key}.parquet"
    assert s3_keys(s3_url) == [orphan]  # the whole object, but no manifest
    assert completed_keys(project.state, "parquet") == set()
    assert project.watermarks.get("parquet") == 0

    report = verify_exports(project.settings.export_dir)
    assert [o.description for o in report.outcomes] == [f"{orphan} has no manifest"]
    with pytest.raises(UnpublishedFileError, match="not published: its manifest is missing"):
        project.published_file("parquet", window.key)
    with pytest.raises(UnpublishedFileError):  # CSV is never made from an unpublished Parquet
        export_window_file(project, "csv", window, holder="test")

    export_window_file(project, "parquet", window, holder="test")  # the next run rewrites it
    export_window_file(project, "csv", window, holder="test")
    assert verify_exports(project.settings.export_dir).passed
    assert project.watermarks.get("parquet") == window.hi


def _rows(count: int) -> pa.RecordBatch:
    text = pa.array([f"{i:08d}" * 64 for i in range(count)])
    return pa.record_batch([text], names=["v"])


def test_a_failed_upload_leaves_no_object_and_no_open_multipart_upload(s3_url: str) -> None:
    target = UPath(f"{s3_url}/big.jsonl")
    schema = pa.schema([("v", pa.string())])

    def batches() -> Iterator[pa.RecordBatch]:
        for _ in range(6):  # ~3 MB each: parts are uploaded before the failure
            yield _rows(5_000)
        raise Crash

    with pytest.raises(Crash):
        write_atomically("jsonl", batches(), schema, target)
    assert s3_keys(s3_url) == []
    bucket, _ = _bucket_and_key(s3_url)
    assert not boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads")

    written = write_atomically("jsonl", [_rows(5_000)] * 6, schema, target)
    body = s3_object(str(target))
    assert written.bytes == len(body) > BLOCK_SIZE  # uploaded as a multipart upload
    import hashlib

    assert written.sha256 == hashlib.sha256(body).hexdigest()
