"""The destinations TOML file as pydantic models: what each key accepts, checked at load.

Tables refuse unknown keys (a typo must not be silently ignored), numbers are strict (`2.5`
is not a batch size, `true` is not 1), and the rules that tie keys together (auth needs a
header and a token variable; field mappings that would break the protocol or collide) are
model validators. `errors_as_line` turns pydantic's errors into the one-line message the CLI
prints, naming the file, the destination, the table and the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from subscription_export.core.columns import BASE_TYPES
from subscription_export.core.secrets import mask_url
from subscription_export.core.validation import Count, NonNegativeNumber, PositiveNumber, problem
from subscription_export.delivery.mapping import CRM_FIELD_NAMES, FIELDS_OF_KIND
from subscription_export.delivery.retry import RetryPolicy

Kind = Literal["erp", "crm", "accounting"]
KINDS: tuple[Kind, ...] = get_args(Kind)
# Watermark consumers that already exist: a destination must not share their watermark.
RESERVED_NAMES = frozenset({"parquet", "csv", "jsonl"})
# Fields the protocol itself relies on (path id, version checks): never renamed.
_FIXED_FIELDS = frozenset({"id", "version"})
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,49}$")


def _destination_name(name: str) -> str:
    """A name becomes part of an asset name (`{name}_sync`), a watermark consumer and every
    idempotency key, so it is kept to identifier characters."""
    if not _NAME.match(name):
        raise ValueError(
            "names are lower-case letters, digits and _ (max 50), starting with a letter"
        )
    if name in RESERVED_NAMES:
        raise ValueError("the name is taken by an export format")
    return name


def _http_base_url(raw: str) -> str:
    parts = urlsplit(raw)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError(f"= {mask_url(raw)!r} is not an http(s) URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return raw.rstrip("/")


HeaderWord = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
DestinationName = Annotated[str, AfterValidator(_destination_name)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthTable(_Table):
    """`[destinations.NAME.auth]`: the token itself never lives in the file."""

    header: HeaderWord | None = Field(None, description="an HTTP header name")
    token_env: EnvName | None = Field(None, description="the name of an environment variable")
    scheme: HeaderWord | None = Field(None, description="a word like 'Bearer'")


class TimeoutsTable(_Table):
    connect_s: PositiveNumber = 3.05
    read_s: PositiveNumber = 10.0


class RetryBudget(_Table):
    """How hard to try one operation (see `delivery.retry` for why these knobs)."""

    max_attempts: Count = 8
    base_delay_s: NonNegativeNumber = 0.25
    max_delay_s: NonNegativeNumber = 30.0
    total_s: PositiveNumber = 120.0

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base_delay_s=self.base_delay_s,
            max_delay_s=self.max_delay_s,
            budget_s=self.total_s,
        )


class DestinationTable(_Table):
    """`[destinations.NAME]`; `kind` defaults to the name when the name is a kind."""

    kind: Kind | None = Field(None, description=", ".join(KINDS))
    base_url: Annotated[str, AfterValidator(_http_base_url)] = Field(
        description="http(s)://host:port"
    )
    batch_size: Count | None = None  # None: the kind's DEFAULT_BATCH_SIZE
    batch_endpoint: StrictBool = True
    max_concurrency: Count = 4
    auth: AuthTable = AuthTable()
    timeouts: TimeoutsTable = TimeoutsTable()
    retry: RetryBudget = RetryBudget()
    field_mapping: dict[str, Annotated[str, StringConstraints(min_length=1)]] = Field(
        default_factory=dict, description='a table of field = "their name"'
    )
    # Which captured table feeds the destination, and which of its columns feed each field
    # (checked against the table's columns when a run binds it: `delivery.columns`).
    table: Annotated[str, StringConstraints(min_length=1)] | None = Field(
        None, description="the name of a captured table"
    )
    columns: dict[str, Annotated[str, StringConstraints(min_length=1)]] = Field(
        default_factory=dict, description='a table of field = "source column"'
    )

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> DestinationTable:
        if self.kind is None:
            raise ValueError(f"key 'kind' must be one of {', '.join(KINDS)}, got None")
        self._check_auth(info.context or {})
        self._check_field_mapping(self.kind)
        self._check_columns(self.kind)
        if not self.batch_endpoint and self.kind != "erp":
            raise ValueError(
                f"key 'batch_endpoint' = false is only for kind 'erp' ({self.kind} only takes"
                " batches)"
            )
        return self

    def _check_auth(self, context: Mapping[str, Any]) -> None:
        """Both a header and a token variable, or no [auth] at all; the variable must be set."""
        if not self.auth.model_fields_set:
            return
        for key in ("header", "token_env"):
            if getattr(self.auth, key) is None:
                allowed = AuthTable.model_fields[key].description
                raise ValueError(f"key 'auth.{key}' must be {allowed}")
        env: Mapping[str, str] = context.get("env", {})
        if not env.get(str(self.auth.token_env)):
            raise ValueError(
                f"environment variable {self.auth.token_env} (auth.token_env) is not set or empty"
            )

    def _check_columns(self, kind: Kind) -> None:
        fields = FIELDS_OF_KIND[kind]
        unknown = sorted(self.columns.keys() - set(fields))
        if unknown:
            raise ValueError(
                f"key 'columns.{unknown[0]}': not a field of kind {kind!r} (fields:"
                f" {', '.join(fields)})"
            )

    def _check_field_mapping(self, kind: Kind) -> None:
        renamed = self.field_mapping
        if renamed and kind == "accounting":
            raise ValueError(
                "key 'field_mapping' is not supported for kind 'accounting' (journal entries are"
                " not subscription records)"
            )
        fixed = sorted(renamed.keys() & _FIXED_FIELDS)
        if fixed:
            raise ValueError(
                f"key 'field_mapping.{fixed[0]}': {fixed[0]} drives the protocol and cannot be"
                " renamed"
            )
        targets = list(renamed.values())
        duplicates = sorted({t for t in targets if targets.count(t) > 1})
        if duplicates:
            raise ValueError(f"key 'field_mapping' maps several fields to {duplicates[0]!r}")
        built_in = CRM_FIELD_NAMES if kind == "crm" else {}
        kept = {built_in.get(f, f) for f in BASE_TYPES if f not in renamed}
        clashes = sorted(set(targets) & kept)
        if clashes:
            raise ValueError(
                f"key 'field_mapping' renames a field to {clashes[0]!r}, which the record already"
                " has"
            )


class DestinationsFile(_Table):
    """The whole file: `[destinations.NAME]` tables and nothing else."""

    destinations: dict[DestinationName, DestinationTable] = Field(
        default_factory=dict, description="a table"
    )

    @field_validator("destinations", mode="before")
    @classmethod
    def _kind_defaults_to_the_name(cls, tables: Any) -> Any:
        if not isinstance(tables, dict):
            return tables
        return {
            name: {"kind": name, **table} if isinstance(table, dict) and name in KINDS else table
            for name, table in tables.items()
        }


_SUB_TABLES = {"auth": AuthTable, "timeouts": TimeoutsTable, "retry": RetryBudget}


def errors_as_line(error: ValidationError, source: object) -> str:
    """Every error of the file on one line: `FILE: destination 'erp', [retry]: key ...`."""
    return "; ".join(_one_error(details["loc"], details, source) for details in error.errors())


def _one_error(loc: tuple[int | str, ...], details: Any, source: object) -> str:
    if not loc or loc[0] != "destinations" or len(loc) < 2:
        return _phrase(f"{source}", DestinationsFile, loc, details)
    where, rest = f"{source}: destination {loc[1]!r}", loc[2:]
    if not rest and details["type"] == "model_type":
        return f"{where}: must be a table [destinations.{loc[1]}]"
    if not rest or rest == ("[key]",):  # a rule of the whole table, or its name
        return f"{where}: {problem(details)}"
    if len(rest) > 1 and rest[0] in _SUB_TABLES:
        return _phrase(f"{where}, [{rest[0]}]", _SUB_TABLES[str(rest[0])], rest[1:], details)
    if len(rest) > 1:  # a field_mapping entry
        return f"{where}: key '{'.'.join(map(str, rest))}' {problem(details, 'a non-empty string')}"
    return _phrase(where, DestinationTable, rest, details)


def _phrase(where: str, table: type[BaseModel], loc: tuple[Any, ...], details: Any) -> str:
    if details["type"] == "extra_forbidden":
        known = ", ".join(sorted(table.model_fields))
        return f"{where}: unknown key {loc[-1]!r} (known keys: {known})"
    key = str(loc[0]) if loc else ""
    field = table.model_fields.get(key)
    allowed = field.description if field else None
    if (
        field is not None
        and isinstance(field.default, BaseModel)
        and details["type"] == "model_type"
    ):
        allowed = "a table"  # `auth = 5` where [auth] was meant
    return f"{where}: key {key!r} {problem(details, allowed)}"
