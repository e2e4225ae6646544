"""Typed settings from `SUBSCRIPTION_EXPORT_*` environment variables (CLI flags override them).

`Settings` is the one list of settings: pydantic-settings reads and validates the environment,
the Dagster resource (`defs/resources.py`) derives its config fields from `Settings.model_fields`,
and `as_env()` hands the same values to child processes. A bad value is a `ConfigError` on one
line naming the environment variable and what it accepts, never a pydantic error table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BeforeValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict
from upath import UPath

from subscription_export.core.datasets import TableDataset, parse_tables
from subscription_export.core.errors import ConfigError
from subscription_export.core.locations import export_location, is_local, parse_storage_options

ENV_PREFIX = "SUBSCRIPTION_EXPORT_"
DEFAULT_HOME = Path(".subscription_export")

SchemaContract = Literal["evolve", "freeze", "discard_row", "discard_value"]


def _without_seconds_suffix(raw: object) -> object:
    """`30s` reads as 30 (the unit is always seconds)."""
    return raw.strip().removesuffix("s") if isinstance(raw, str) else raw


def _export_location(raw: object, info: ValidationInfo) -> UPath:
    """A folder or fsspec URL as a UPath carrying the storage options (read first)."""
    if not isinstance(raw, str | Path | UPath):
        raise ValueError("is not a path or URL")
    return export_location(raw, parse_storage_options(info.data.get("storage_options")))


# Serialized as its text: `as_env`, the Dagster resource and `replace` round-trip through it.
ExportLocation = Annotated[UPath, PlainValidator(_export_location), PlainSerializer(str)]
PositiveCount = Annotated[int, Field(gt=0)]
Seconds = Annotated[float, BeforeValidator(_without_seconds_suffix), Field(ge=0)]


def _env_name(field: str) -> Any:
    """The variable a field is read from, where it differs from prefix + field name."""
    return Field(validation_alias=ENV_PREFIX + field)


class Settings(BaseSettings):
    """Where the data lives and how windows are cut.

    Defaults keep everything in local files (`./.subscription_export/`, `./exports/`), so the
    project runs with no servers; production points the URLs at PostgreSQL and Redis. Values
    given to the constructor win over the environment, which fills in the rest.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,  # `VAR=` means "not set", as an unset variable would
        frozen=True,  # hashable: one Project (and its pools) per Settings per process
        extra="forbid",
        validate_by_name=True,  # the constructor takes field names, the env the variable names
    )

    source_url: str = Field(
        f"sqlite:///{DEFAULT_HOME / 'source.db'}", description="SQLAlchemy URL of the source DB"
    )
    state_url: str = Field(
        f"sqlite:///{DEFAULT_HOME / 'state.db'}", description="SQLAlchemy URL of the state DB"
    )
    # Before export_dir, whose validator reads it.
    storage_options: str | None = Field(
        None, description="JSON object of fsspec options for an object-store EXPORT_DIR"
    )
    export_dir: ExportLocation = Field(
        UPath("exports"), description="Export folder or fsspec URL (s3://, gs://, az://)"
    )
    watermark_url: str | None = Field(
        None, description="redis://… for watermarks in Redis (unset: in the state DB)"
    )
    window_max_changes: PositiveCount = Field(100_000, description="Changes per window at most")
    window_max_age_s: Annotated[Seconds, _env_name("WINDOW_MAX_AGE")] = Field(
        60.0, description="Seconds before a partial window closes"
    )
    read_batch_size: PositiveCount = Field(10_000, description="Change-log rows read at a time")
    lease_wait_s: Annotated[Seconds, _env_name("LEASE_WAIT")] = Field(
        300.0, description="Seconds a run waits for another run exporting the same window"
    )
    sensor_interval_s: Annotated[Seconds, _env_name("SENSOR_INTERVAL")] = Field(
        30.0, description="Seconds between the change-log sensor's evaluations (at least 1)"
    )
    lease_ttl_s: Annotated[Seconds, Field(gt=0)] = Field(
        60.0, description="Seconds a lease outlives its holder's last heartbeat (renewed at 1/3)"
    )
    push_max_attempts: PositiveCount = Field(
        5, description="Attempts at a reconcile push before it becomes a dead letter"
    )
    schema_contract: SchemaContract = Field(
        "evolve", description="What a schema change does to the export (formats/contract.py)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="CLI log lines as text, or one JSON object per line"
    )
    csv_neutralize_formulas: bool = Field(
        True, description="Prefix ' to CSV text cells a spreadsheet would run as a formula"
    )
    table: str = Field(
        "subscriptions",
        min_length=1,
        description="The source table `init` captures (it must exist and have a primary key)",
    )
    tables: str | None = Field(
        None,
        description="Comma-separated tables to capture, in one ordered stream (unset: TABLE)",
    )

    @field_validator("tables")
    @classmethod
    def _tables_are_a_list(cls, text: str | None) -> str | None:
        if text is not None:
            parse_tables(text)
        return text

    @property
    def captured_tables(self) -> tuple[str, ...]:
        """The captured tables in configured order; the first is the one destinations read."""
        return parse_tables(self.tables) if self.tables else (self.table,)

    @property
    def datasets(self) -> tuple[TableDataset, ...]:
        return tuple(TableDataset(t) for t in self.captured_tables)

    @field_validator("storage_options")
    @classmethod
    def _options_are_a_json_object(cls, text: str | None) -> str | None:
        try:
            parse_storage_options(text)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return text

    @model_validator(mode="wrap")
    @classmethod
    def _one_line_errors(cls, values: Any, handler: Any) -> Any:
        try:
            return handler(values)
        except ValidationError as error:
            raise ConfigError("; ".join(map(_message, error.errors()))) from None

    @classmethod
    def from_env(cls) -> Settings:
        return cls()

    def resolved(self) -> Settings:
        """Relative SQLite files and export folder made absolute against the current folder, so
        Dagster runs started by the daemon elsewhere still find them."""
        return replace(
            self,
            source_url=_absolute_sqlite(self.source_url),
            state_url=_absolute_sqlite(self.state_url),
            export_dir=self.export_dir.absolute() if is_local(self.export_dir) else self.export_dir,
        )

    def with_overrides(self, **overrides: object) -> Settings:
        """Apply CLI flags; `None` means 'not given'."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_env(self) -> dict[str, str]:
        """The same settings as environment variables, for child processes (Dagster runs)."""
        return {
            env_variable(name): _env_text(value)
            for name, value in self.model_dump().items()
            if value is not None  # an unset variable is how None reads back
        }


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy with `changes` applied and validated (`dataclasses.replace` for Settings)."""
    return type(settings)(**{**settings.model_dump(), **changes})


def _env_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def env_variable(field: str) -> str:
    """The environment variable a setting is read from."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else ENV_PREFIX + field.upper()


def _message(error: ErrorDetails) -> str:
    """One pydantic error as one phrase naming the variable and what it accepts."""
    name = _field_name(str(error["loc"][0]) if error["loc"] else "")
    if name is None:
        return f"{error['loc'][0]!r} is not a setting; known: {', '.join(Settings.model_fields)}"
    key, raw, kind = env_variable(name), error["input"], error["type"]
    if name == "storage_options":  # may hold credentials: never echoed
        return f"{key} {error['msg'].removeprefix('Value error, ')}"
    if kind.startswith("int_"):
        return f"{key}={raw!r} is not a whole number"
    if kind.startswith("float_"):
        return f"{key}={raw!r} is not a number of seconds"
    if kind == "greater_than":
        return f"{key} must be positive, got {raw}"
    if kind == "greater_than_equal":
        return f"{key} must not be negative, got {raw}"
    if kind.startswith("bool_"):
        return f"{key}={raw!r} is not true or false"
    if kind == "literal_error":
        allowed = get_args(Settings.model_fields[name].annotation)
        return f"{key}={raw!r} is unknown; use one of {', '.join(allowed)}"
    return f"{key}={raw!r}: {error['msg']}"


def _field_name(located: str) -> str | None:
    """The field an error is about: pydantic locates it by name or by variable name."""
    for name in Settings.model_fields:
        if located in (name, env_variable(name)):
            return name
    return None


def _absolute_sqlite(url: str) -> str:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/") or url == prefix + ":memory:":
        return url
    path, _, query = url[len(prefix) :].partition("?")
    absolute = f"{prefix}{Path(path).absolute()}"
    return f"{absolute}?{query}" if query else absolute
