"""Settings as a Dagster resource, so runs, sensors and the UI share one configuration.

The resource's config fields are made from `Settings.model_fields` (Dagster's config is
pydantic too), so a new setting appears here, in the UI's launchpad and in `as_env()` without
being listed again. Values are checked by `Settings` when a run builds its Project, with the
same one-line errors as the environment gets.

The URL-like settings (they may carry a password) are `dg.EnvVar`s when they came from the
environment: the UI's resource view then shows `SUBSCRIPTION_EXPORT_SOURCE_URL`, not the URL,
and each run reads the variable itself. A value that did not come from the environment (a CLI
flag) stays literal; the CLI runs such jobs in its own process, never in the UI's view.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, create_model
from pydantic_core import to_jsonable_python
from upath import UPath

from subscription_export.core.settings import Settings, env_variable
from subscription_export.runtime import Project

_projects: dict[Settings, Project] = {}

# Settings that may hold credentials (database, Redis or fsspec URLs, fsspec options).
_FROM_ENV_VAR = ("source_url", "state_url", "watermark_url", "export_dir", "storage_options")


def _config_field(name: str) -> tuple[Any, Any]:
    """A setting as a Dagster config field: Dagster's config has no Path, so paths are strings
    (constraints stay with `Settings`, which validates the values)."""
    setting = Settings.model_fields[name]
    annotation = str if setting.annotation in (Path, UPath) else setting.annotation
    default = to_jsonable_python(setting.default)
    return annotation, Field(default=default, description=setting.description)


_SettingsFields: type[dg.ConfigurableResource] = create_model(
    "_SettingsFields",
    __base__=dg.ConfigurableResource,
    __module__=__name__,
    **{name: _config_field(name) for name in Settings.model_fields},  # type: ignore[call-overload]
)


class ExportSettings(_SettingsFields):  # type: ignore[misc,valid-type]
    """Where the source, state and files live (defaults come from SUBSCRIPTION_EXPORT_* env)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ExportSettings:
        values: dict[str, Any] = settings.model_dump(mode="json")
        for name in _FROM_ENV_VAR:
            variable = env_variable(name)
            if values[name] is not None and os.environ.get(variable) == values[name]:
                values[name] = dg.EnvVar(variable)
        return cls(**values)

    def settings(self) -> Settings:
        """In a run Dagster has resolved every `EnvVar`; outside one it is read here."""
        values = {name: _value(getattr(self, name)) for name in Settings.model_fields}
        return _settings_of(json.dumps(values, sort_keys=True, default=str))

    def project(self) -> Project:
        """One Project (and its connection pools) per settings per process."""
        settings = self.settings()
        if settings not in _projects:
            _projects[settings] = Project(settings)
        return _projects[settings]


@lru_cache(maxsize=64)
def _settings_of(values_json: str) -> Settings:
    """`Settings` of these values, validated once: every value is given, so the environment
    adds nothing and the result depends on the values alone. A run asks ~10 times (each
    resource and asset), and each `Settings` (pydantic-settings) costs ~2 ms (issue 15)."""
    return Settings(**json.loads(values_json))


def _value(configured: Any) -> Any:
    return configured.get_value() if isinstance(configured, dg.EnvVar) else configured
