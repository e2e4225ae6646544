"""Settings from the environment: defaults, overrides, and one clear line per bad value."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from subscription_export.core.errors import ConfigError
from subscription_export.core.settings import ENV_PREFIX, Settings, replace
from subscription_export.defs.resources import ExportSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env()
    assert settings == Settings()
    assert settings.export_dir == Path("exports") and settings.watermark_url is None
    assert (settings.window_max_changes, settings.window_max_age_s) == (100_000, 60.0)
    assert settings.schema_contract == "evolve"


def test_environment_is_read_with_the_prefix_and_seconds_suffix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_PREFIX + "EXPORT_DIR", "/data/out")
    monkeypatch.setenv(ENV_PREFIX + "WINDOW_MAX_CHANGES", "500")
    monkeypatch.setenv(ENV_PREFIX + "WINDOW_MAX_AGE", "30s")
    monkeypatch.setenv(ENV_PREFIX + "LEASE_WAIT", "0")
    monkeypatch.setenv(ENV_PREFIX + "SCHEMA_CONTRACT", "freeze")
    monkeypatch.setenv(ENV_PREFIX + "WATERMARK_URL", "")  # empty means unset
    settings = Settings.from_env()
    assert settings.export_dir == Path("/data/out")
    assert (settings.window_max_changes, settings.window_max_age_s) == (500, 30.0)
    assert (settings.lease_wait_s, settings.schema_contract) == (0.0, "freeze")
    assert settings.watermark_url is None


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "WINDOW_MAX_CHANGES",
            "lots",
            "SUBSCRIPTION_EXPORT_WINDOW_MAX_CHANGES='lots' is not a whole number",
        ),
        ("READ_BATCH_SIZE", "0", "SUBSCRIPTION_EXPORT_READ_BATCH_SIZE must be positive, got 0"),
        (
            "WINDOW_MAX_AGE",
            "soon",
            "SUBSCRIPTION_EXPORT_WINDOW_MAX_AGE='soon' is not a number of seconds",
        ),
        ("LEASE_WAIT", "-5", "SUBSCRIPTION_EXPORT_LEASE_WAIT must not be negative, got -5"),
        (
            "SCHEMA_CONTRACT",
            "loose",
            "SUBSCRIPTION_EXPORT_SCHEMA_CONTRACT='loose' is unknown;"
            " use one of evolve, freeze, discard_row, discard_value",
        ),
    ],
)
def test_a_bad_variable_is_one_line_naming_it_and_what_it_accepts(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(ENV_PREFIX + variable, value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value) == message


def test_several_bad_variables_are_all_named_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PREFIX + "WINDOW_MAX_CHANGES", "-1")
    monkeypatch.setenv(ENV_PREFIX + "LEASE_WAIT", "never")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value) == (
        "SUBSCRIPTION_EXPORT_WINDOW_MAX_CHANGES must be positive, got -1;"
        " SUBSCRIPTION_EXPORT_LEASE_WAIT='never' is not a number of seconds"
    )


def test_values_given_in_code_are_checked_and_unknown_names_refused() -> None:
    with pytest.raises(ConfigError, match=r"^SUBSCRIPTION_EXPORT_WINDOW_MAX_CHANGES must be"):
        Settings(window_max_changes=0)
    with pytest.raises(ConfigError, match=r"^'window_size' is not a setting; known: source_url"):
        Settings(window_size=5)  # type: ignore[call-arg]


def test_given_values_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PREFIX + "WATERMARK_URL", "redis://elsewhere")
    monkeypatch.setenv(ENV_PREFIX + "WINDOW_MAX_AGE", "5")
    settings = Settings(watermark_url=None, window_max_age_s=1.0)
    assert (settings.watermark_url, settings.window_max_age_s) == (None, 1.0)


def test_replace_and_overrides_validate_and_keep_settings_hashable() -> None:
    base = Settings(export_dir=Path("a"))
    changed = replace(base, window_max_changes=7, export_dir="b")
    assert (changed.window_max_changes, changed.export_dir) == (7, Path("b"))
    assert base.window_max_changes == 100_000  # frozen: the original is untouched
    with pytest.raises(ConfigError, match="must be positive"):
        replace(base, read_batch_size=0)
    overridden = base.with_overrides(export_dir=None, window_max_age_s=2.0)
    assert (overridden.export_dir, overridden.window_max_age_s) == (Path("a"), 2.0)
    assert {base: 1}[Settings(export_dir=Path("a"))] == 1


def test_as_env_round_trips_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        export_dir=Path("/x"), watermark_url="redis://r", window_max_age_s=0.5, lease_wait_s=0
    )
    env = settings.as_env()
    assert ENV_PREFIX + "WATERMARK_URL" not in Settings().as_env()  # None: left unset
    assert env[ENV_PREFIX + "WINDOW_MAX_AGE"] == "0.5" and env[ENV_PREFIX + "LEASE_WAIT"] == "0.0"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == settings


def test_resolved_makes_relative_sqlite_files_and_folder_absolute() -> None:
    settings = Settings(source_url="sqlite:///rel/s.db?timeout=5", export_dir=Path("out"))
    resolved = settings.resolved()
    assert resolved.source_url == f"sqlite:///{Path('rel/s.db').absolute()}?timeout=5"
    assert resolved.export_dir == Path("out").absolute()
    assert Settings(state_url="sqlite:///:memory:").resolved().state_url == "sqlite:///:memory:"


def test_the_dagster_resource_has_one_config_field_per_setting() -> None:
    fields = ExportSettings.to_config_schema().as_field().config_type.fields  # type: ignore[attr-defined]
    assert list(fields) == list(Settings.model_fields)
    assert fields["export_dir"].default_value == "exports"  # Dagster config has no Path
    settings = Settings(export_dir=Path("/out"), read_batch_size=3, schema_contract="freeze")
    assert ExportSettings.from_settings(settings).settings() == settings


def test_the_resource_reports_a_bad_value_like_the_environment_does() -> None:
    resource = ExportSettings.from_settings(Settings()).model_copy(update={"read_batch_size": 0})
    with pytest.raises(ConfigError, match="SUBSCRIPTION_EXPORT_READ_BATCH_SIZE must be positive"):
        resource.settings()
    assert isinstance(ExportSettings.from_settings(Settings()), dg.ConfigurableResource)


def test_the_resource_validates_the_same_values_once() -> None:
    """Every resource and asset of a run asks for the settings (~10 times a run, ~2 ms each
    through pydantic-settings, issue 15): the same values give the same validated object;
    other values give their own."""
    resource = ExportSettings.from_settings(Settings(read_batch_size=3))
    assert resource.settings() is resource.settings()
    assert (
        ExportSettings.from_settings(Settings(read_batch_size=3)).settings() is resource.settings()
    )
    other = resource.model_copy(update={"read_batch_size": 4}).settings()
    assert other.read_batch_size == 4
    assert resource.settings().read_batch_size == 3
