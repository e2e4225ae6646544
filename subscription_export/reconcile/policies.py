"""Conflict policies per destination: a default plus per-destination replacements, from
$SUBSCRIPTION_EXPORT_CONFLICT_STRATEGY and an optional TOML file (docs/conflicts.md).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from subscription_export.core.errors import ConfigError
from subscription_export.reconcile.strategies import ConflictPolicy, Strategy

ENV_STRATEGY = "SUBSCRIPTION_EXPORT_CONFLICT_STRATEGY"
ENV_POLICY_FILE = "SUBSCRIPTION_EXPORT_CONFLICTS"
DEFAULT_STRATEGY = Strategy.LAST_WRITER_WINS


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConflictPolicies:
    """The policy of every destination: one default plus per-destination replacements.

    A destination's table replaces the default entirely (it is not merged key by key), so a
    `manual` destination does not inherit `field_owners` meant for `field_ownership`.
    """

    default: ConflictPolicy
    destinations: Mapping[str, ConflictPolicy] = field(default_factory=dict)
    source: str = "defaults"

    def for_destination(self, name: str) -> ConflictPolicy:
        return self.destinations.get(name, self.default)


def load_policies(
    path: Path | str | None = None, env: Mapping[str, str] | None = None
) -> ConflictPolicies:
    """Policies from a TOML file (`path`, else $SUBSCRIPTION_EXPORT_CONFLICTS) and the env.

    File layout: an optional `[default]` table and `[destinations.<name>]` tables, each with the
    keys of `ConflictPolicy.from_mapping`. Without a file, or without a `[default]` table, the
    default strategy is $SUBSCRIPTION_EXPORT_CONFLICT_STRATEGY (default `last_writer_wins`).
    """
    environ = os.environ if env is None else env
    strategy = environ.get(ENV_STRATEGY) or DEFAULT_STRATEGY.value
    try:
        env_default = ConflictPolicy.from_mapping({"strategy": strategy})
    except ConfigError as exc:
        raise ConfigError(f"{ENV_STRATEGY}: {exc}") from None
    raw_path = path if path is not None else environ.get(ENV_POLICY_FILE)
    if not raw_path:
        return ConflictPolicies(env_default, {}, f"{ENV_STRATEGY}={strategy}")
    where = Path(raw_path)
    try:
        data = tomllib.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such conflict policy file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"default", "destinations"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: default, destinations)")
    default = _policy(data["default"], f"{where} [default]") if "default" in data else env_default
    tables = data.get("destinations", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: [destinations] must be a table")
    per = {name: _policy(t, f"{where} [destinations.{name}]") for name, t in tables.items()}
    return ConflictPolicies(default, per, str(where))


def _policy(table: Any, where: str) -> ConflictPolicy:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    try:
        return ConflictPolicy.from_mapping(table)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
