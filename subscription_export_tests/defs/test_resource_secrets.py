"""Dagster's resource view never shows a database password: the settings resource takes its URLs
from `dg.EnvVar`, so the UI shows the variable's name, and a run still reads the real value
(issue 12, item 13)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_representation.external_data import (
    RepositorySnap,
    ResourceConfigEnvVarSnap,
)

from subscription_export.core.settings import Settings, env_variable
from subscription_export.defs.definitions import build_definitions
from subscription_export.defs.resources import ExportSettings

SECRET = "hunter2pw"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    # SQLite ignores user info, so the run can open it: a password the run must carry.
    urls = {
        "source_url": f"postgresql://reader:{SECRET}@db.example:5432/prod",
        "state_url": f"sqlite:///{tmp_path / 'state.db'}",
        "watermark_url": f"redis://:{SECRET}@cache.example:6379/2",
    }
    for name, url in urls.items():
        monkeypatch.setenv(env_variable(name), url)
    monkeypatch.setenv(env_variable("export_dir"), str(tmp_path / "exports"))
    return urls


def test_the_ui_resource_view_shows_variable_names_not_passwords(
    secret_env: dict[str, str],
) -> None:
    defs = build_definitions(Settings.from_env())
    snap = RepositorySnap.from_def(defs.get_repository_def())
    (resource,) = [r for r in snap.resources if r.name == "settings"]
    shown = repr(resource.configured_values)
    assert SECRET not in shown
    for name in ("source_url", "state_url", "watermark_url"):
        value = resource.configured_values[name]
        assert value == ResourceConfigEnvVarSnap(name=env_variable(name)), value

    configured = defs.resources["settings"]
    assert isinstance(configured, ExportSettings)
    assert isinstance(configured.source_url, dg.EnvVar)

    @dg.asset
    def probe(settings: ExportSettings) -> dict[str, str | None]:
        read = settings.settings()
        return {"source": read.source_url, "watermark": read.watermark_url}

    result = dg.materialize([probe], resources={"settings": configured})
    assert result.output_for_node("probe") == {
        "source": secret_env["source_url"],
        "watermark": secret_env["watermark_url"],
    }


def test_settings_not_from_the_environment_stay_literal(tmp_path: Path) -> None:
    """The CLI's flags override the environment: those values are passed as they are."""
    settings = Settings(state_url=f"sqlite:///{tmp_path / 'flag.db'}")
    resource = ExportSettings.from_settings(settings)
    assert not isinstance(resource.state_url, dg.EnvVar)
    assert resource.settings() == settings
