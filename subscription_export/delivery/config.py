"""Destinations declared in one TOML file, validated when it is loaded.

Why one file, validated up front: a typo in a key or a missing token must stop the run before
the first request, with a message naming the file, the destination and the key - not surface
as a 401 or a silently ignored setting half-way through a window.

Where the file is: `$SUBSCRIPTION_EXPORT_DESTINATIONS` if set (it must then exist), else
`./destinations.toml` if present, else no destination is configured (the sync assets skip).
`destinations.example.toml` documents every key.

Tokens never live in the file: `auth.token_env` names the environment variable holding the
token, read at load time (a missing variable is an error naming it). Field mapping renames
subscription fields to the names a remote system uses; it is applied to the payload after the
built-in mapping (`sync.mapping`), so it is part of what the idempotency key covers: change it
only between windows, never while a window has open dead letters (their replay would send a
different body under the same key, which the remote refuses with 422).
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from subscription_export.core.columns import BASE_TYPES
from subscription_export.core.errors import ConfigError
from subscription_export.delivery.clients import (
    AccountingClient,
    CrmClient,
    DeliveryClient,
    ErpClient,
    OutboundItem,
    Unit,
)
from subscription_export.delivery.mapping import CRM_FIELD_NAMES, ChangeRow
from subscription_export.delivery.retry import RetryPolicy

ENV_PATH = "SUBSCRIPTION_EXPORT_DESTINATIONS"
DEFAULT_PATH = Path("destinations.toml")

Kind = Literal["erp", "crm", "accounting"]
KINDS: tuple[Kind, ...] = ("erp", "crm", "accounting")
CLIENT_CLASSES: dict[Kind, type[DeliveryClient]] = {
    "erp": ErpClient,
    "crm": CrmClient,
    "accounting": AccountingClient,
}

# A destination name becomes part of an asset name (`{name}_sync`), a watermark consumer and
# every idempotency key, so it is kept to identifier characters.
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
# Watermark consumers that already exist: a destination must not share their watermark.
RESERVED_NAMES = frozenset({"parquet", "csv", "jsonl"})
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an RFC 9110 token
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Fields the protocol itself relies on (path id, version checks): never renamed.
_FIXED_FIELDS = frozenset({"id", "version"})


class DestinationConfigError(ConfigError):
    """The destinations file is missing, malformed or names something that does not exist."""


@dataclass(frozen=True)
class RetryBudget:
    """How hard to try one operation (see `sync.retry` for why these knobs)."""

    max_attempts: int = 8
    base_delay_s: float = 0.25
    max_delay_s: float = 30.0
    total_s: float = 120.0

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base_delay_s=self.base_delay_s,
            max_delay_s=self.max_delay_s,
            budget_s=self.total_s,
        )


@dataclass(frozen=True)
class DestinationConfig:
    """One external system: where it is, how to authenticate, how hard to push."""

    name: str
    kind: Kind
    base_url: str
    auth_header: str | None = None
    auth_token_env: str | None = None
    auth_token: str | None = field(default=None, repr=False)  # resolved from the env var
    auth_scheme: str | None = None  # e.g. "Bearer": header value is "Bearer <token>"
    batch_size: int = 100
    max_concurrency: int = 4
    connect_timeout_s: float = 3.05
    read_timeout_s: float = 10.0
    retry: RetryBudget = field(default_factory=RetryBudget)
    field_mapping: Mapping[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        if self.auth_header is None or self.auth_token is None:
            return {}
        value = f"{self.auth_scheme} {self.auth_token}" if self.auth_scheme else self.auth_token
        return {self.auth_header: value}

    def client(self, retry: RetryPolicy | None = None) -> DeliveryClient:
        """A ready client: the kind's API shape, this destination's name in idempotency keys
        and echo suppression, its timeouts, pool size, auth header and field mapping."""
        cls = _client_class(self.kind, self.name, bool(self.field_mapping))
        client = cls(
            self.base_url,
            retry=retry or self.retry.policy(),
            timeout=(self.connect_timeout_s, self.read_timeout_s),
            pool_size=max(self.max_concurrency, 1),
        )
        if isinstance(client, _RenamingMixin):
            client.field_mapping = dict(self.field_mapping)
        client.session.headers.update(self.headers())
        return client


@dataclass(frozen=True)
class DestinationsConfig:
    """Every configured destination by name; `path` is None when no file was found."""

    path: Path | None
    destinations: Mapping[str, DestinationConfig]

    def get(self, name: str) -> DestinationConfig | None:
        return self.destinations.get(name)

    @property
    def names(self) -> list[str]:
        return list(self.destinations)

    def describe(self) -> str:
        return str(self.path) if self.path else f"no destinations file (${ENV_PATH} unset)"


NO_DESTINATIONS = DestinationsConfig(None, {})


# -- loading -----------------------------------------------------------------------------------


def destinations_path(env: Mapping[str, str] | None = None) -> Path | None:
    """The file to load: the env var (must exist), else ./destinations.toml if present."""
    environ = os.environ if env is None else env
    raw = environ.get(ENV_PATH)
    if raw:
        path = Path(raw)
        if not path.is_file():
            raise DestinationConfigError(f"{ENV_PATH}={raw}: no such file")
        return path
    return DEFAULT_PATH if DEFAULT_PATH.is_file() else None


def load_destinations(
    path: Path | str | None = None, env: Mapping[str, str] | None = None
) -> DestinationsConfig:
    """Load and validate; `path=None` finds the file as `destinations_path` says."""
    environ = os.environ if env is None else env
    where = Path(path) if path is not None else destinations_path(environ)
    if where is None:
        return NO_DESTINATIONS
    try:
        data = tomllib.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DestinationConfigError(f"{where}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise DestinationConfigError(f"{where}: not valid TOML ({exc})") from None
    return parse_destinations(data, where, environ)


def parse_destinations(
    data: Mapping[str, Any], source: Path, env: Mapping[str, str]
) -> DestinationsConfig:
    """Validate the parsed TOML document (split from loading so tests can feed dicts)."""
    _only_keys(data, {"destinations"}, f"{source}")
    tables = data.get("destinations", {})
    if not isinstance(tables, dict):
        raise DestinationConfigError(f"{source}: [destinations] must be a table")
    destinations = {}
    for name, table in tables.items():
        where = f"{source}: destination {name!r}"
        if not _NAME.match(name):
            raise DestinationConfigError(
                f"{where}: names are lower-case letters, digits and _ (max 50), starting with a"
                " letter"
            )
        if name in RESERVED_NAMES:
            raise DestinationConfigError(f"{where}: the name is taken by an export format")
        if not isinstance(table, dict):
            raise DestinationConfigError(f"{where}: must be a table [destinations.{name}]")
        destinations[name] = _destination(name, table, where, env)
    return DestinationsConfig(source, destinations)


_TOP_KEYS = {
    "kind",
    "base_url",
    "batch_size",
    "max_concurrency",
    "auth",
    "timeouts",
    "retry",
    "field_mapping",
}


def _destination(
    name: str, table: Mapping[str, Any], where: str, env: Mapping[str, str]
) -> DestinationConfig:
    _only_keys(table, _TOP_KEYS, where)
    kind = table.get("kind", name if name in KINDS else None)
    if kind not in KINDS:
        raise DestinationConfigError(
            f"{where}: key 'kind' must be one of {', '.join(KINDS)}, got {kind!r}"
        )
    kind = cast(Kind, kind)
    auth = _table(table, "auth", where)
    _only_keys(auth, {"header", "token_env", "scheme"}, f"{where}, [auth]")
    timeouts = _table(table, "timeouts", where)
    _only_keys(timeouts, {"connect_s", "read_s"}, f"{where}, [timeouts]")
    retry = _table(table, "retry", where)
    _only_keys(
        retry, {"max_attempts", "base_delay_s", "max_delay_s", "total_s"}, f"{where}, [retry]"
    )
    defaults = DestinationConfig(name, kind, "http://unset")
    budget = RetryBudget(
        max_attempts=_positive_int(retry, "max_attempts", RetryBudget.max_attempts, where),
        base_delay_s=_non_negative(retry, "base_delay_s", RetryBudget.base_delay_s, where),
        max_delay_s=_non_negative(retry, "max_delay_s", RetryBudget.max_delay_s, where),
        total_s=_positive(retry, "total_s", RetryBudget.total_s, where),
    )
    header, token_env, token, scheme = _auth(auth, where, env)
    return DestinationConfig(
        name=name,
        kind=kind,
        base_url=_url(table, where),
        auth_header=header,
        auth_token_env=token_env,
        auth_token=token,
        auth_scheme=scheme,
        batch_size=_positive_int(table, "batch_size", defaults.batch_size, where),
        max_concurrency=_positive_int(table, "max_concurrency", defaults.max_concurrency, where),
        connect_timeout_s=_positive(timeouts, "connect_s", defaults.connect_timeout_s, where),
        read_timeout_s=_positive(timeouts, "read_s", defaults.read_timeout_s, where),
        retry=budget,
        field_mapping=_field_mapping(table, kind, where),
    )


def _only_keys(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise DestinationConfigError(
            f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(known))})"
        )


def _table(table: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise DestinationConfigError(f"{where}: key {key!r} must be a table")
    return value


def _url(table: Mapping[str, Any], where: str) -> str:
    raw = table.get("base_url")
    if not isinstance(raw, str) or not raw:
        raise DestinationConfigError(f"{where}: key 'base_url' is required (http(s)://host:port)")
    parts = urlsplit(raw)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise DestinationConfigError(
            f"{where}: key 'base_url' = {raw!r} is not an http(s) URL with a host"
        )
    if parts.query or parts.fragment:
        raise DestinationConfigError(f"{where}: key 'base_url' must not have a query or fragment")
    return raw.rstrip("/")


def _number(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DestinationConfigError(f"{where}: key {key!r} must be a number, got {value!r}")
    return float(value)


def _positive(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = _number(table, key, default, where)
    if value <= 0:
        raise DestinationConfigError(f"{where}: key {key!r} must be positive, got {value:g}")
    return value


def _non_negative(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = _number(table, key, default, where)
    if value < 0:
        raise DestinationConfigError(f"{where}: key {key!r} must not be negative, got {value:g}")
    return value


def _positive_int(table: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DestinationConfigError(f"{where}: key {key!r} must be a whole number, got {value!r}")
    if value <= 0:
        raise DestinationConfigError(f"{where}: key {key!r} must be positive, got {value}")
    return value


def _auth(
    auth: Mapping[str, Any], where: str, env: Mapping[str, str]
) -> tuple[str | None, str | None, str | None, str | None]:
    """(header, token env var, token, scheme); both header and token_env, or neither."""
    if not auth:
        return None, None, None, None
    header, token_env, scheme = auth.get("header"), auth.get("token_env"), auth.get("scheme")
    if not isinstance(header, str) or not _HEADER.match(header):
        raise DestinationConfigError(f"{where}: key 'auth.header' must be an HTTP header name")
    if not isinstance(token_env, str) or not _ENV_NAME.match(token_env):
        raise DestinationConfigError(
            f"{where}: key 'auth.token_env' must name an environment variable"
        )
    if scheme is not None and (not isinstance(scheme, str) or not _HEADER.match(scheme)):
        raise DestinationConfigError(f"{where}: key 'auth.scheme' must be a word like 'Bearer'")
    token = env.get(token_env)
    if not token:
        raise DestinationConfigError(
            f"{where}: environment variable {token_env} (auth.token_env) is not set or empty"
        )
    return header, token_env, token, scheme


def _field_mapping(table: Mapping[str, Any], kind: Kind, where: str) -> dict[str, str]:
    mapping = _table(table, "field_mapping", where)
    if not mapping:
        return {}
    if kind == "accounting":
        raise DestinationConfigError(
            f"{where}: key 'field_mapping' is not supported for kind 'accounting' (journal"
            " entries are not subscription records)"
        )
    renamed: dict[str, str] = {}
    for ours, theirs in mapping.items():
        if ours in _FIXED_FIELDS:
            raise DestinationConfigError(
                f"{where}: key 'field_mapping.{ours}': {ours} drives the protocol and cannot be"
                " renamed"
            )
        if not isinstance(theirs, str) or not theirs:
            raise DestinationConfigError(
                f"{where}: key 'field_mapping.{ours}' must be a non-empty string"
            )
        renamed[ours] = theirs
    targets = list(renamed.values())
    duplicates = sorted({t for t in targets if targets.count(t) > 1})
    if duplicates:
        raise DestinationConfigError(
            f"{where}: key 'field_mapping' maps several fields to {duplicates[0]!r}"
        )
    built_in = CRM_FIELD_NAMES if kind == "crm" else {}
    kept = {built_in.get(f, f) for f in BASE_TYPES if f not in renamed}
    clashes = sorted(set(targets) & kept)
    if clashes:
        raise DestinationConfigError(
            f"{where}: key 'field_mapping' renames a field to {clashes[0]!r}, which the record"
            " already has"
        )
    return renamed


# -- clients with this destination's name and field mapping ------------------------------------


class _RenamingMixin(DeliveryClient):
    """Applies `field_mapping` to each prepared payload's record (after the built-in mapping).

    Keys are subscription field names; for the CRM they are matched against its built-in names
    (`amount` is `price` there), so users write the same mapping whatever the kind. Extra
    columns (under `extra` / `custom_fields`) are renamed too.
    """

    field_mapping: dict[str, str] = {}
    _record_key: str = "body"
    _extra_key: str = "extra"
    _built_in: Mapping[str, str] = {}

    def prepare(
        self,
        rows: Sequence[ChangeRow],
        *,
        window_key: str,
        prior_state: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[OutboundItem]:
        items = super().prepare(rows, window_key=window_key, prior_state=prior_state)
        return [self._renamed(item) for item in items]

    def _renamed(self, item: OutboundItem) -> OutboundItem:
        if not item.units:
            return item
        units = []
        for unit in item.units:
            body = copy.deepcopy(unit.body)
            record = self._record(body)
            if record is not None:
                self._rename(record)
                extra = record.get(self._extra_key)
                if isinstance(extra, dict):
                    self._rename(extra)
            units.append(Unit(unit.key, body))
        return OutboundItem(item.lsn, item.subscription_id, item.key, tuple(units))

    def _record(self, body: dict[str, Any]) -> dict[str, Any] | None:
        record = body.get(self._record_key)
        return record if isinstance(record, dict) else None

    def _rename(self, record: dict[str, Any]) -> None:
        """Rename all at once (so `a -> b, b -> c` works), in place, keeping key order."""
        names = {
            self._built_in.get(ours, ours): theirs for ours, theirs in self.field_mapping.items()
        }
        renamed: dict[str, Any] = {}
        for key, value in record.items():
            target = names.get(key, key)
            if target in renamed:
                raise DestinationConfigError(
                    f"{self.destination}: field_mapping gives two fields the name {target!r}"
                    " (an extra column has that name; rename it too)"
                )
            renamed[target] = value
        record.clear()
        record.update(renamed)


class _ErpRenaming(_RenamingMixin, ErpClient):
    _record_key = "body"  # {"method", "path", "body": record}
    _extra_key = "extra"


class _CrmRenaming(_RenamingMixin, CrmClient):
    _record_key = "record"
    _extra_key = "custom_fields"
    _built_in = CRM_FIELD_NAMES


_RENAMING: dict[Kind, type[DeliveryClient]] = {"erp": _ErpRenaming, "crm": _CrmRenaming}
_client_classes: dict[tuple[Kind, str, bool], type[DeliveryClient]] = {}


def _client_class(kind: Kind, name: str, renaming: bool) -> type[DeliveryClient]:
    """The kind's client class, named for this destination (keys and echo use the name)."""
    key = (kind, name, renaming)
    if key not in _client_classes:
        base = _RENAMING[kind] if renaming else CLIENT_CLASSES[kind]
        if base.destination == name:
            _client_classes[key] = base
        else:
            class_name = f"{base.__name__.lstrip('_')}_{name}"
            _client_classes[key] = type(class_name, (base,), {"destination": name})
    return _client_classes[key]
