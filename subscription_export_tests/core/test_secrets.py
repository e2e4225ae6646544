"""Credentials never reach a message: every URL form's password is masked (issue 12, item 13),
and URL mistakes that used to pass silently are one-line errors naming the bad part (item 14)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from subscription_export.core.db import engine_for, normalize_url, redact
from subscription_export.core.errors import ConfigError
from subscription_export.core.secrets import mask_in_text, mask_url
from subscription_export.source.demo_table import create_demo_table
from subscription_export.state.watermarks import watermark_store
from subscription_export_tests.cli_run import run_cli

SECRET = "hunter2pw"

URL_FORMS = [
    f"postgres://user:{SECRET}@db.example:5432/prod",
    f"postgresql+psycopg://user:{SECRET}@db.example/prod?sslmode=require",
    f"postgresql://user:{SECRET}/x@db.example/prod",  # a raw `/` in the password
    f"mysql://user:{SECRET}@db.example/prod",
    f"redis://:{SECRET}@cache.example:6379/0",
    f"rediss://user:{SECRET}@cache.example:6380/1",
    f"redis+sentinel://:{SECRET}@sentinel.example:26379/mymaster/0",
    f"http://user:{SECRET}@erp.example/api",
    f"https://{SECRET}@erp.example/api",
    f"https://erp.example/api?password={SECRET}&x=1",
    f"https://erp.example/api?token={SECRET}",
    f"https://erp.example/api?x=1&api_key={SECRET}",
    f"postgresql://db.example/prod?password={SECRET}",
]


@pytest.mark.parametrize("url", URL_FORMS)
def test_every_url_form_loses_its_password(url: str) -> None:
    assert SECRET not in mask_url(url)
    assert SECRET not in redact(url)
    message = f"error: cannot use {url!r} (tried {url}); nothing else"
    masked = mask_in_text(message)
    assert SECRET not in masked
    assert masked.startswith("error: cannot use '") and masked.endswith("; nothing else")


def test_urls_without_a_secret_are_kept_as_given() -> None:
    for url in (
        "sqlite:///relative/state.db",
        "sqlite:////abs/state.db?mode=ro",
        "postgresql://user@db.example:5432/prod?options=-csearch_path%3Dx",
        "redis://127.0.0.1:6379/3?namespace=prod",
        "http://127.0.0.1:8080/api",
    ):
        assert mask_url(url) == url
    assert mask_in_text("idempotency key: erp:1-2:3") == "idempotency key: erp:1-2:3"


def test_unsupported_database_error_masks_the_password() -> None:
    with pytest.raises(ConfigError, match="unsupported database") as error:
        normalize_url(f"mysql://user:{SECRET}@db.example/prod")
    assert SECRET not in str(error.value)
    with pytest.raises(ConfigError) as error:
        normalize_url(f"not a url with {SECRET}")
    assert "not a database URL" in str(error.value)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        (f"redis+sentinel://:{SECRET}@sentinel.example:26379/mymaster/0", "redis+sentinel"),
        (f"memcached://:{SECRET}@cache.example:11211", "memcached"),
        (f"redis://:{SECRET}@127.0.0.1:6379/9x", "'9x'"),
        (f"redis://:{SECRET}@127.0.0.1:63a79/0", "'63a79'"),
        (f"redis://:{SECRET}@127.0.0.1:6379/0/1", "'0/1'"),
    ],
)
def test_bad_watermark_urls_are_refused_naming_the_bad_part(
    url: str, named: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as error:
        watermark_store(url, None)  # type: ignore[arg-type]  # refused before any connection
    message = str(error.value)
    assert named in message and SECRET not in message
    assert "WATERMARK_URL" in message and "\n" not in message


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(args, None, cwd, check=False, env=env)


def test_cli_errors_never_print_a_password(tmp_path: Path) -> None:
    bad_source = {"SUBSCRIPTION_EXPORT_SOURCE_URL": f"mysql://user:{SECRET}@db.example/prod"}
    bad_redis = {
        "SUBSCRIPTION_EXPORT_SOURCE_URL": f"sqlite:///{tmp_path / 'source.db'}",
        "SUBSCRIPTION_EXPORT_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "SUBSCRIPTION_EXPORT_WATERMARK_URL": f"redis+sentinel://:{SECRET}@127.0.0.1:26379/m/0",
    }
    plain = {k: v for k, v in bad_redis.items() if "WATERMARK" not in k}
    create_demo_table(engine_for(plain["SUBSCRIPTION_EXPORT_SOURCE_URL"], writer=True))
    assert _cli(["init"], plain, tmp_path).returncode == 0
    for env, expected in ((bad_source, "unsupported database"), (bad_redis, "redis+sentinel")):
        result = _cli(["status"], env, tmp_path)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and SECRET not in result.stdout + result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


READ_ONLY_COMMANDS = [
    ["status"],
    ["quarantine", "list"],
    ["dead-letters", "list"],
    ["conflicts", "list"],
    ["conflicts", "show", "1"],
    ["conflicts", "history", "--subscription", "s1"],
    ["dashboard", "--out", "dash.html"],
]


@pytest.mark.parametrize("args", READ_ONLY_COMMANDS, ids=lambda a: " ".join(a))
def test_read_only_commands_do_not_create_a_mistyped_state_db(
    args: list[str], tmp_path: Path
) -> None:
    env = {
        "SUBSCRIPTION_EXPORT_SOURCE_URL": f"sqlite:///{tmp_path / 'source.db'}",
        "SUBSCRIPTION_EXPORT_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
    }
    create_demo_table(engine_for(env["SUBSCRIPTION_EXPORT_SOURCE_URL"], writer=True))
    assert _cli(["init"], env, tmp_path).returncode == 0
    typo = tmp_path / "sub" / "stat.db"
    result = _cli(args, {**env, "SUBSCRIPTION_EXPORT_STATE_URL": f"sqlite:///{typo}"}, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"state database {typo} does not exist; run `subscription-export init` first" in (
        result.stderr.replace("\n", "")
    )
    assert not typo.exists() and not typo.parent.exists()


def test_status_does_not_create_a_mistyped_source_db(tmp_path: Path) -> None:
    typo = tmp_path / "sorce.db"
    env = {
        "SUBSCRIPTION_EXPORT_SOURCE_URL": f"sqlite:///{typo}",
        "SUBSCRIPTION_EXPORT_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
    }
    result = _cli(["status"], env, tmp_path)
    assert result.returncode == 2
    assert "does not exist; run `subscription-export init` first" in result.stderr
    assert not typo.exists() and not (tmp_path / "state.db").exists()
