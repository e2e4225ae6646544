"""Destinations declared in one TOML file, validated when it is loaded.

Why one file, validated up front: a typo in a key or a missing token must stop the run before
the first request, with a message naming the file, the destination and the key - not surface
as a 401 or a silently ignored setting half-way through a window.

Where the file is: `$SUBSCRIPTION_EXPORT_DESTINATIONS` if set (it must then exist), else
`./destinations.toml` if present, else no destination is configured (the sync assets skip).
`destinations.example.toml` documents every key; `config_file.py` holds the pydantic models
that validate it (unknown keys, types and ranges, the rules tying keys together).

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
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from subscription_export.core.errors import ConfigError
from subscription_export.delivery.clients import (
    AccountingClient,
    CrmClient,
    DeliveryClient,
    ErpClient,
    OutboundItem,
    Unit,
)
from subscription_export.delivery.config_file import KINDS as KINDS  # re-exported
from subscription_export.delivery.config_file import (
    DestinationsFile,
    DestinationTable,
    Kind,
    RetryBudget,
    errors_as_line,
)
from subscription_export.delivery.mapping import CRM_FIELD_NAMES, ChangeRow
from subscription_export.delivery.retry import RetryPolicy

ENV_PATH = "SUBSCRIPTION_EXPORT_DESTINATIONS"
DEFAULT_PATH = Path("destinations.toml")

CLIENT_CLASSES: dict[Kind, type[DeliveryClient]] = {
    "erp": ErpClient,
    "crm": CrmClient,
    "accounting": AccountingClient,
}
_TOP_KEYS = set(DestinationTable.model_fields)
# Changes a request when the file sets no `batch_size`: what each kind's API takes in one
# request, so a window needs few round trips (requests cost the client more than items do).
# ERP `$batch` (OData/NetSuite-style) and the accounting journal batch take up to 1000 items
# (the sandbox's limit); 500 leaves room. The CRM is modelled on Salesforce, whose sObject
# Collections take 200 records a request.
DEFAULT_BATCH_SIZE: dict[Kind, int] = {"erp": 500, "crm": 200, "accounting": 500}


class DestinationConfigError(ConfigError):
    """The destinations file is missing, malformed or names something that does not exist."""


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
    batch_size: int = 0  # changes a request; 0 (unset): DEFAULT_BATCH_SIZE[kind]
    batch_endpoint: bool = True  # ERP: POST /subscriptions/$batch; False: one request a change
    max_concurrency: int = 4
    connect_timeout_s: float = 3.05
    read_timeout_s: float = 10.0
    retry: RetryBudget = field(default_factory=RetryBudget)
    field_mapping: Mapping[str, str] = field(default_factory=dict)
    table: str | None = None  # None: the captured table
    columns: Mapping[str, str] = field(default_factory=dict)  # field -> source column
    file: Path | None = field(default=None, compare=False)  # named in binding errors

    def __post_init__(self) -> None:
        if not self.batch_size:  # frozen: set once, here, from the kind
            object.__setattr__(self, "batch_size", DEFAULT_BATCH_SIZE[self.kind])

    @classmethod
    def from_table(
        cls, name: str, table: DestinationTable, env: Mapping[str, str], file: Path | None = None
    ) -> DestinationConfig:
        """A validated `[destinations.NAME]` table with its token read from `env`."""
        auth = table.auth
        return cls(
            name=name,
            kind=cast(Kind, table.kind),  # set: the table's validator refuses a missing kind
            base_url=table.base_url,
            auth_header=auth.header,
            auth_token_env=auth.token_env,
            auth_token=env.get(auth.token_env) if auth.token_env else None,
            auth_scheme=auth.scheme,
            batch_size=table.batch_size or 0,
            batch_endpoint=table.batch_endpoint,
            max_concurrency=table.max_concurrency,
            connect_timeout_s=table.timeouts.connect_s,
            read_timeout_s=table.timeouts.read_s,
            retry=table.retry,
            field_mapping=dict(table.field_mapping),
            table=table.table,
            columns=dict(table.columns),
            file=file,
        )

    def headers(self) -> dict[str, str]:
        if self.auth_header is None or self.auth_token is None:
            return {}
        value = f"{self.auth_scheme} {self.auth_token}" if self.auth_scheme else self.auth_token
        return {self.auth_header: value}

    def client(self, retry: RetryPolicy | None = None) -> DeliveryClient:
        """A ready client: the kind's API shape, this destination's name in idempotency keys
        and echo suppression, its timeouts, pool size, auth header and field mapping."""
        cls = _client_class(self.kind, self.name, bool(self.field_mapping))
        batch = {"batch": self.batch_endpoint} if self.kind == "erp" else {}
        client = cls(
            self.base_url,
            retry=retry or self.retry.policy(),
            timeout=(self.connect_timeout_s, self.read_timeout_s),
            pool_size=max(self.max_concurrency, 1),
            **batch,
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
    try:
        document = DestinationsFile.model_validate(data, context={"env": env})
    except ValidationError as exc:
        raise DestinationConfigError(errors_as_line(exc, source)) from None
    destinations = {
        name: DestinationConfig.from_table(name, table, env, source)
        for name, table in document.destinations.items()
    }
    return DestinationsConfig(source, destinations)


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
