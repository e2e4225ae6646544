"""Conflict policies per destination: a default plus per-destination replacements, from
$SUBSCRIPTION_EXPORT_CONFLICT_STRATEGY and an optional TOML file (docs/conflicts.md).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from subscription_export.core.errors import ConfigError
from subscription_export.reconcile.strategies import ConflictPolicy, Strategy, policy_problem

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

    File layout (`PolicyFile`): an optional `[default]` table and `[destinations.<name>]` tables,
    each with the keys of `ConflictPolicy`. Without a file, or without a `[default]` table, the
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
    try:
        document = PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("; ".join(_located(exc, where))) from None
    default = document.default or env_default
    return ConflictPolicies(default, document.destinations, str(where))


class PolicyFile(BaseModel):
    """The conflict policy file: an optional `[default]` and `[destinations.<name>]` tables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: ConflictPolicy | None = None
    destinations: dict[str, ConflictPolicy] = Field(default_factory=dict)


def _located(error: ValidationError, where: Path) -> list[str]:
    """Each error after its table: `conflicts.toml [destinations.crm]: conflict policy: …`."""
    lines = []
    for details in error.errors():
        loc = details["loc"]
        if not loc:
            lines.append(f"{where}: {details['msg']}")
        elif loc[0] not in PolicyFile.model_fields:
            lines.append(f"{where}: unknown key {loc[0]!r} (known: default, destinations)")
        elif loc == ("destinations",):
            lines.append(f"{where}: [destinations] must be a table")
        else:
            table = loc[:1] if loc[0] == "default" else loc[:2]
            phrase = policy_problem(details, loc[len(table) :])
            name = ".".join(map(str, table))
            lines.append(f"{where} [{name}]: conflict policy: {phrase}")
    return lines
