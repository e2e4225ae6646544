"""Which table and which of its columns feed a destination (the destinations file's `table`
and `columns`), bound to the table's real shape.

Destinations speak about subscriptions: each kind's payload is made of subscription fields
(`mapping.FIELDS_OF_KIND`). A `ColumnMap` turns a change row of the captured table into a row
of those fields (`to_fields`) before any payload is built, and turns subscription fields read
back from a remote into the table's columns (`to_columns`, `key_value`) for the write-back. So
the payload code, the conflict model and the sync state stay in field names whatever the table
calls its columns, and the demo's table (every field is the column of its name) is mapped to
itself, unchanged.

* `id` is the table's primary key (a single column: text, integer or uuid), in the change log's
  canonical text form (`42`, a uuid in lower case), which is what remotes key records by and
  what the change log's `subscription_id` holds. Written back, it becomes the key's own type.
* A field not named in `columns` comes from the column of its name when the table has one.
  A required field (`mapping.REQUIRED_FIELDS`) with no column is an error at bind time.
* Columns feeding no field travel as extra columns under their own names (ERP `extra`, CRM
  `custom_fields`), except one named like a field that another column feeds: it is left out
  (sending it would give the record two values for one name).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.columns import LogicalType, decimal_params
from subscription_export.delivery.config import DestinationConfig, DestinationConfigError
from subscription_export.delivery.mapping import (
    FIELDS_OF_KIND,
    META_COLUMNS,
    REQUIRED_FIELDS,
    MappingError,
)
from subscription_export.runtime import Project
from subscription_export.source.catalog import read_table
from subscription_export.source.schema import latest_capture_schema
from subscription_export.state.destination_tables import last_table, record_table

log = logging.getLogger(__name__)

KEY_TYPES = ("text", "integer", "uuid")
# The logical types a field accepts (a column of another type would make every payload fail).
_FIELD_TYPES: dict[str, tuple[str, ...]] = {
    "id": KEY_TYPES,
    "amount": ("decimal", "integer"),
    "version": ("integer",),
    "next_billing_date": ("date",),
    "created_at": ("timestamp",),
    "updated_at": ("timestamp",),
}
_TEXT = ("text", "uuid")
ID_MAX_LENGTH = 200  # the state tables' `subscription_id` (String(200)) holds no longer id
_INT64 = (-(2**63), 2**63 - 1)  # SQLite's INTEGER and PostgreSQL's bigint
_PG_INT_MAX = {"int2": 2**15 - 1, "int4": 2**31 - 1}
_PG_INT_NAME = {"int2": "smallint", "int4": "integer"}
_PG_CHAR_NAME = {"varchar": "varchar", "bpchar": "char"}
_PG_COLUMN_TYPES = (
    "SELECT a.attname, t.typname, a.atttypmod FROM pg_attribute a"
    " JOIN pg_type t ON t.oid = a.atttypid"
    " WHERE a.attrelid = to_regclass(:name) AND a.attnum > 0 AND NOT a.attisdropped"
)
# column -> (its declared type as a message names it, the limit): the characters of a
# varchar(n)/char(n) column, the largest value of an int2/int4 one (PostgreSQL catalog)
Limits = Mapping[str, tuple[str, int]]


def shown_id(ident: str, limit: int = 60) -> str:
    """A remote's id for a message: quoted with control characters escaped (`repr`), cut at
    `limit` characters (a hostile id may be long)."""
    cut = ident[:limit]
    return repr(cut) + (f"... ({len(ident)} characters)" if len(ident) > limit else "")


def audit_id(ident: str) -> str:
    """The id an audit entry of a remote's record is filed under: the id itself, or its
    first characters and a marker when it is longer than the state tables hold."""
    return ident if len(ident) <= ID_MAX_LENGTH else ident[: ID_MAX_LENGTH - 1] + "\u2026"


@dataclass(frozen=True)
class TableColumns:
    """The captured table as a destination sees it: name, key columns, columns and types."""

    name: str
    key: tuple[str, ...]
    types: Mapping[str, LogicalType]
    key_limit: int | None = None  # see `ColumnMap.key_limit`
    limits: Limits = dataclasses.field(default_factory=dict)  # see `ColumnMap.limits`


@dataclass(frozen=True)
class ColumnMap:
    """A destination's fields bound to the columns of its table (see the module docstring)."""

    table: str
    key: str  # the primary-key column, which feeds `id`
    types: Mapping[str, LogicalType]  # the table's columns
    fields: Mapping[str, str]  # field -> column, `id` included
    left_out: frozenset[str] = frozenset()  # columns named like a field another column feeds
    # what the key column holds beyond its logical type (PostgreSQL catalog): the largest
    # integer of an int2/int4 key, the characters of a varchar(n)/char(n) key; None: no limit
    # but the logical type's own (int64, `ID_MAX_LENGTH`)
    key_limit: int | None = None
    # what every column holds beyond its logical type (`Limits`), read with the key's: a remote
    # value past it would fail the write-back with a `DataError` (`value_error`)
    limits: Limits = dataclasses.field(default_factory=dict)

    # cached: asked for every row and field (frozen: computed once from fields that never change)
    @cached_property
    def identity(self) -> bool:
        """Every field is the column of its name and the key is text (the demo's table): rows
        pass unchanged."""
        same = all(f == c for f, c in self.fields.items())
        return same and not self.left_out and self.types[self.key] == "text"

    @cached_property
    def field_types(self) -> dict[str, LogicalType]:
        """Field (and extra column) -> logical type, `id` as text (its canonical form)."""
        by_field = {f: self.types[c] for f, c in self.fields.items()}
        by_field["id"] = "text"
        fed = set(self.fields.values()) | self.left_out
        return by_field | {c: t for c, t in self.types.items() if c not in fed}

    def key_text(self, value: Any) -> Any:
        """The key in the change log's canonical text form (`42`, a lower-case uuid)."""
        if value is None or (isinstance(value, str) and self.types[self.key] == "text"):
            return value
        if isinstance(value, bool):
            raise MappingError(f"{self.key}={value!r} is not a key")
        return str(value).lower() if isinstance(value, uuid.UUID | str) else str(value)

    def key_value(self, ident: str) -> Any:
        """A canonical key back in the key column's type (an integer key as an int, a uuid
        key as a UUID: PostgreSQL has no uuid = varchar operator)."""
        logical = self.types[self.key]
        try:
            if logical == "integer":
                return int(ident)
            if logical == "uuid":
                return uuid.UUID(ident)
        except ValueError:
            raise MappingError(f"{self.key}: {ident!r} is not a valid {logical} key") from None
        return ident

    def key_error(self, ident: str) -> str | None:
        """Why a remote's record id cannot name a row of this table (None: it can). It must
        be a key's canonical text form (what we delivered: `42`, a lower-case uuid), so that
        it names the row the change log knows it by; a spelling that converts to another
        key (` 42`, `4_2`, an upper-case uuid) would name a record the remote never had."""
        logical = self.types[self.key]
        where = f"column {self.key!r} ({logical} key): id {shown_id(ident)}"
        largest = self.key_limit if logical == "integer" and self.key_limit else _INT64[1]
        if not ident:
            return f"{where} is empty"
        if len(ident) > ID_MAX_LENGTH:
            return f"{where} is longer than {ID_MAX_LENGTH} characters"
        if "\x00" in ident:  # PostgreSQL text cannot hold NUL
            return f"{where} contains a NUL character"
        try:
            value = self.key_value(ident)
        except MappingError:
            return f"{where} is not a valid {logical} key"
        if logical == "integer" and not -largest - 1 <= value <= largest:
            return f"{where} is out of the key column's range ({-largest - 1}..{largest})"
        if logical == "text" and self.key_limit is not None and len(ident) > self.key_limit:
            return f"{where} is longer than the key column ({self.key_limit} characters)"
        canonical = self.key_text(value)
        if canonical != ident:
            return f"{where} is not in canonical form ({canonical!r})"
        return None

    def value_error(self, record: Mapping[str, Any]) -> str | None:
        """Why a remote's record (fields, converted to their logical types) cannot be written
        to the table's columns (None: it can): a text past its varchar(n)/char(n) column, an
        integer past its int2/int4 column. Checked before any write, so the change is
        `invalid` instead of a `DataError` that fails the whole round."""
        column_of, field_types = self.fields, self.field_types
        for name, value in record.items():
            column = column_of.get(name, name if name in field_types else None)
            limit = self.limits.get(column) if column and column != self.key else None
            if limit is None or value is None:
                continue
            declared, most = limit
            where = f"field {name!r} (column {column!r}, {declared}): value {shown_id(str(value))}"
            if isinstance(value, str) and len(value) > most:
                return f"{where} is longer than {most} characters"
            number = isinstance(value, int) and not isinstance(value, bool)
            if number and not -most - 1 <= value <= most:
                return f"{where} is out of the column's range ({-most - 1}..{most})"
        return None

    def to_fields(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A change row (or image) of the table as a row of fields; `_` metadata kept."""
        if self.identity:
            return dict(row)
        fed = set(self.fields.values()) | self.left_out
        out = {name: value for name, value in row.items() if name in META_COLUMNS}
        for field, column in self.fields.items():
            if column in row:
                out[field] = row[column]
        if "id" in out:
            out["id"] = self.key_text(out["id"])
        out.update((c, v) for c, v in row.items() if c not in fed and c not in META_COLUMNS)
        return out

    def to_columns(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Fields (and extra columns) back to the table's columns; unknown names dropped."""
        column_of, field_types = self.fields, self.field_types
        out: dict[str, Any] = {}
        for name, value in record.items():
            column = column_of.get(name, name if name in field_types else None)
            if column is None or column not in self.types:
                continue
            out[column] = self.key_value(value) if column == self.key else value
        return out


def identity_map(table: TableColumns) -> ColumnMap:
    """Every column feeds the field of its name (what `columns` defaults to on the demo)."""
    fields = {name: name for name in table.types}
    fields["id"] = table.key[0]
    return ColumnMap(
        table.name,
        table.key[0],
        dict(table.types),
        fields,
        key_limit=table.key_limit,
        limits=table.limits,
    )


def read_table_columns(source: Engine, table: str) -> TableColumns:
    """The captured table's key (catalog) and exported column types (capture schema)."""
    with source.connect() as conn:
        latest = latest_capture_schema(conn, table)
        previous = {c.name: c.type for c in latest.columns} if latest else {}
        shape = read_table(conn, table, previous)
        limits = _column_limits(conn, table)
    types = previous or {c.name: c.type for c in shape.columns}
    key = limits.get(shape.key[0]) if len(shape.key) == 1 else None
    return TableColumns(table, shape.key, types, key[1] if key else None, limits)


def _column_limits(conn: Connection, table: str) -> dict[str, tuple[str, int]]:
    """PostgreSQL: the largest value of each int2/int4 column, the length of each
    varchar(n)/char(n) one (`Limits`; the logical types do not carry them, and a value past
    them fails the write-back). One catalog read when the table is bound; SQLite: none."""
    if conn.dialect.name != "postgresql":
        return {}
    quoted = conn.dialect.identifier_preparer.quote_identifier(table)
    limits: dict[str, tuple[str, int]] = {}
    for column, typname, typmod in conn.execute(sa.text(_PG_COLUMN_TYPES), {"name": quoted}):
        if typname in _PG_CHAR_NAME and typmod > 4:
            length = int(typmod) - 4  # atttypmod of a character type is n + 4
            limits[column] = (f"{_PG_CHAR_NAME[typname]}({length})", length)
        elif typname in _PG_INT_MAX:
            limits[column] = (_PG_INT_NAME[typname], _PG_INT_MAX[typname])
    return limits


def bind_columns(config: DestinationConfig, table: TableColumns) -> ColumnMap:
    """The destination's `columns` checked against the table; a mistake is one line naming the
    file, the destination and the key."""
    where = f"{config.file or 'destinations file'}: destination {config.name!r}"
    if len(table.key) != 1:
        raise DestinationConfigError(
            f"{where}: table {table.name!r} has a composite key ({', '.join(table.key)});"
            " a destination needs a single-column key"
        )
    fields: dict[str, str] = {"id": table.key[0]}
    for field in FIELDS_OF_KIND[config.kind]:
        column = config.columns.get(field) or (field if field in table.types else None)
        if field == "id" and column is not None and column != table.key[0]:
            raise DestinationConfigError(
                f"{where}: key 'columns.id' = {column!r}: id is the table's primary key"
                f" ({table.key[0]!r})"
            )
        if column is not None and field != "id":
            fields[field] = column
    for field, column in fields.items():
        _check_column(where, table, field, column, named=field in config.columns)
    missing = [f for f in REQUIRED_FIELDS[config.kind] if f not in fields]
    if missing:
        raise DestinationConfigError(
            f"{where}: table {table.name!r} has no column for required field {missing[0]!r};"
            f' map one: columns.{missing[0]} = "COLUMN"'
        )
    fed = set(fields.values())
    left_out = frozenset(c for c in table.types if c in FIELDS_OF_KIND[config.kind]) - fed
    return ColumnMap(
        table.name, table.key[0], dict(table.types), fields, left_out, table.key_limit, table.limits
    )


def _check_column(where: str, table: TableColumns, field: str, column: str, named: bool) -> None:
    key = f"key 'columns.{field}' = {column!r}" if named else f"field {field!r}"
    logical = table.types.get(column)
    if logical is None:
        known = ", ".join(table.types)
        raise DestinationConfigError(
            f"{where}: {key}: table {table.name!r} has no column {column!r} (columns: {known})"
        )
    family = "decimal" if decimal_params(logical) else logical
    allowed = _FIELD_TYPES.get(field, _TEXT)
    if family not in allowed:
        raise DestinationConfigError(
            f"{where}: {key}: column {column!r} is {logical}; field {field!r} takes"
            f" {' or '.join(allowed)}"
        )


def captured_tables(project: Project) -> tuple[str, ...]:
    """The tables a destination may name (SUBSCRIPTION_EXPORT_TABLES), the default first;
    `one_window.window_parquet` reads the named table's export."""
    return project.settings.captured_tables


class ImpliedTableChanged(DestinationConfigError):
    """A destination without `table` would switch tables because the captured tables were
    reordered: its rows would come from another table without anyone deciding it."""


def destination_table(project: Project, config: DestinationConfig) -> str:
    """The table whose export feeds the destination (unbound: no catalog read). Without a
    `table` key that is the first captured table, refused when it is not the one the
    destination was last delivered from (`ImpliedTableChanged`)."""
    if config.table:
        return config.table
    implied = captured_tables(project)[0]
    before = last_table(project.state, config.name)
    if before is not None and before != implied:
        raise ImpliedTableChanged(
            f"{config.file or 'destinations file'}: destination {config.name!r} has no key"
            f" 'table' and was last delivered from table {before!r}, but the first of"
            f" SUBSCRIPTION_EXPORT_TABLES is now {implied!r}; nothing is delivered: set"
            f' table = "{before}" under [destinations.{config.name}] (or table = "{implied}"'
            " to switch it on purpose)"
        )
    return implied


def remember_table(project: Project, config: DestinationConfig) -> None:
    """Record the table the destination is being delivered from (before anything is sent);
    an explicit `table` that changed is the user's decision, logged."""
    table = destination_table(project, config)
    before = record_table(project.state, config.name, table)
    if before is not None:
        log.warning(
            "%s: now delivered from table %r (was %r): the destinations file's table says so",
            config.name,
            table,
            before,
        )


def project_columns(project: Project, config: DestinationConfig) -> ColumnMap:
    """The destination's table and columns in this project, bound (the one place delivery and
    reconcile get them from)."""
    destination_table(project, config)  # refuses an implied table that changed
    return destination_columns(project.source, config, captured_tables(project))


def destination_columns(
    source: Engine, config: DestinationConfig, captured: Sequence[str]
) -> ColumnMap:
    """The destination's table (default: the first captured one) and columns, bound; its
    `table` must be one of the `captured` tables."""
    table = config.table or captured[0]
    if table not in captured:
        raise DestinationConfigError(
            f"{config.file or 'destinations file'}: destination {config.name!r}: key 'table'"
            f" = {table!r} is not a captured table (captured: {', '.join(captured)})"
        )
    return bind_columns(config, read_table_columns(source, table))
