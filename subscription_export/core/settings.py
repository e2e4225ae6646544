"""Typed settings from `SUBSCRIPTION_EXPORT_*` environment variables (CLI flags override them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from subscription_export.core.errors import ConfigError

ENV_PREFIX = "SUBSCRIPTION_EXPORT_"
DEFAULT_HOME = Path(".subscription_export")


def _env(name: str) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else None


def _positive_int(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not a whole number") from None
    if value <= 0:
        raise ConfigError(f"{ENV_PREFIX}{name} must be positive, got {value}")
    return value


def _seconds(name: str, raw: str | None, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw.removesuffix("s"))
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigError(f"{ENV_PREFIX}{name} must not be negative, got {value}")
    return value


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _flag(name: str, raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE + _FALSE:
        return raw.strip().lower() in _TRUE
    raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not true or false")


@dataclass(frozen=True)
class Settings:
    """Where the data lives and how windows are cut.

    Defaults keep everything in local files (`./.subscription_export/`, `./exports/`), so the
    project runs with no servers; production points the URLs at PostgreSQL and Redis.
    """

    source_url: str = f"sqlite:///{DEFAULT_HOME / 'source.db'}"
    state_url: str = f"sqlite:///{DEFAULT_HOME / 'state.db'}"
    export_dir: Path = Path("exports")
    watermark_url: str | None = None  # None: watermarks live in the state DB
    window_max_changes: int = 100_000
    window_max_age_s: float = 60.0
    read_batch_size: int = 10_000
    lease_wait_s: float = 300.0  # how long a run waits for another run exporting the same window
    schema_contract: str = "evolve"  # evolve | freeze | discard_row | discard_value
    # CSV text cells starting with = + - @ tab CR get a leading ' (spreadsheet formula injection)
    csv_neutralize_formulas: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        defaults = cls()
        export_dir = _env("EXPORT_DIR")
        return cls(
            source_url=_env("SOURCE_URL") or defaults.source_url,
            state_url=_env("STATE_URL") or defaults.state_url,
            export_dir=Path(export_dir) if export_dir else defaults.export_dir,
            watermark_url=_env("WATERMARK_URL"),
            window_max_changes=_positive_int(
                "WINDOW_MAX_CHANGES", _env("WINDOW_MAX_CHANGES"), defaults.window_max_changes
            ),
            window_max_age_s=_seconds(
                "WINDOW_MAX_AGE", _env("WINDOW_MAX_AGE"), defaults.window_max_age_s
            ),
            read_batch_size=_positive_int(
                "READ_BATCH_SIZE", _env("READ_BATCH_SIZE"), defaults.read_batch_size
            ),
            lease_wait_s=_seconds("LEASE_WAIT", _env("LEASE_WAIT"), defaults.lease_wait_s),
            schema_contract=_contract(_env("SCHEMA_CONTRACT") or defaults.schema_contract),
            csv_neutralize_formulas=_flag(
                "CSV_NEUTRALIZE_FORMULAS",
                _env("CSV_NEUTRALIZE_FORMULAS"),
                defaults.csv_neutralize_formulas,
            ),
        )

    def resolved(self) -> Settings:
        """Relative SQLite files and export folder made absolute against the current folder, so
        Dagster runs started by the daemon elsewhere still find them."""
        return replace(
            self,
            source_url=_absolute_sqlite(self.source_url),
            state_url=_absolute_sqlite(self.state_url),
            export_dir=self.export_dir.absolute(),
        )

    def with_overrides(self, **overrides: object) -> Settings:
        """Apply CLI flags; `None` means 'not given'."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "export_dir" in given:
            given["export_dir"] = Path(str(given["export_dir"]))
        return replace(self, **given)  # type: ignore[arg-type]

    def as_env(self) -> dict[str, str]:
        """The same settings as environment variables, for child processes (Dagster runs)."""
        env = {
            ENV_PREFIX + "SOURCE_URL": self.source_url,
            ENV_PREFIX + "STATE_URL": self.state_url,
            ENV_PREFIX + "EXPORT_DIR": str(self.export_dir),
            ENV_PREFIX + "WINDOW_MAX_CHANGES": str(self.window_max_changes),
            ENV_PREFIX + "WINDOW_MAX_AGE": str(self.window_max_age_s),
            ENV_PREFIX + "READ_BATCH_SIZE": str(self.read_batch_size),
            ENV_PREFIX + "LEASE_WAIT": str(self.lease_wait_s),
            ENV_PREFIX + "SCHEMA_CONTRACT": self.schema_contract,
            ENV_PREFIX + "CSV_NEUTRALIZE_FORMULAS": str(self.csv_neutralize_formulas).lower(),
        }
        if self.watermark_url:
            env[ENV_PREFIX + "WATERMARK_URL"] = self.watermark_url
        return env


def _contract(raw: str) -> str:
    from subscription_export.formats.contract import parse_mode

    return parse_mode(raw)


def _absolute_sqlite(url: str) -> str:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/") or url == prefix + ":memory:":
        return url
    path, _, query = url[len(prefix) :].partition("?")
    absolute = f"{prefix}{Path(path).absolute()}"
    return f"{absolute}?{query}" if query else absolute
