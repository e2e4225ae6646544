"""Read a captured table's shape from the database catalog: primary key, columns, logical types.

PostgreSQL: `pg_attribute`/`pg_type`/`pg_index` (exact type names, numeric typmods, enums,
arrays, generated and identity columns). SQLite: `PRAGMA table_xinfo` (declared type names;
generated columns included). A type we do not map is exported as text, with a warning that
`init` prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from subscription_export.core.columns import (
    METADATA_NAMES,
    LogicalType,
    SourceColumn,
    decimal_type,
    logical_type_from_sql,
)
from subscription_export.core.errors import SchemaMissingError

# PostgreSQL type names (pg_type.typname) → logical type. int2/int4 widen to int64 exactly, and
# real to float64 exactly, so one integer and one float type cover them.
_PG_TYPES: dict[str, LogicalType] = {
    "int2": "integer",
    "int4": "integer",
    "int8": "integer",
    "float4": "float",
    "float8": "float",
    "bool": "boolean",
    "text": "text",
    "varchar": "text",
    "bpchar": "text",
    "char": "text",
    "name": "text",
    "citext": "text",
    "date": "date",
    "timestamp": "timestamp",  # naive: taken as UTC (invariant 6)
    "timestamptz": "timestamp",
    "time": "time",
    "uuid": "uuid",
    "json": "json",
    "jsonb": "json",
    "bytea": "binary",
}

_PG_COLUMNS = """
SELECT a.attname, t.typname, t.typtype, et.typname, et.typtype, a.atttypmod,
       COALESCE((SELECT k.n FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                 WHERE k.attnum = a.attnum), 0)
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
WHERE a.attrelid = to_regclass(:name) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


class NoPrimaryKeyError(SchemaMissingError):
    """The table has no primary key, so changes cannot be told apart per row."""


class MetadataNameError(SchemaMissingError):
    """A column has the name of an export metadata column (`_lsn`, `_op`, …)."""


@dataclass(frozen=True)
class TableShape:
    name: str
    key: tuple[str, ...]  # primary-key columns in key order
    columns: tuple[SourceColumn, ...]  # in table order
    warnings: tuple[str, ...] = ()
    # Columns captured as their text (`col::text` in the PostgreSQL image): json/jsonb, so a
    # JSON string document is not read back as plain text, and the types exported as text
    # for lack of a mapping, whose JSON form may be a number (numeric without precision).
    as_text: tuple[str, ...] = ()

    def names_of(self, logical: LogicalType) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.type == logical)


def read_table(
    conn: Connection, table: str, previous: dict[str, LogicalType] | None = None
) -> TableShape:
    """The table's shape, or SchemaMissingError (no such table) / NoPrimaryKeyError.

    `previous`: the last registered types (SQLite only: a column declared plain `TEXT` keeps
    the type an earlier version registered, so tables created by older releases, whose decimal
    and timestamp columns were declared TEXT, keep exporting as before)."""
    if conn.dialect.name == "postgresql":
        quoted = conn.dialect.identifier_preparer.quote_identifier(table)
        rows = conn.execute(sa.text(_PG_COLUMNS), {"name": quoted}).all()
        found = [(name, *_pg_logical(*rest), pos) for name, *rest, pos in rows]
    else:
        found = _sqlite_columns(conn, table, previous or {})
    if not found:
        raise SchemaMissingError(
            f"table {table!r} does not exist in the source; create it (or run"
            " `subscription-export demo` for the demo table), or set SUBSCRIPTION_EXPORT_TABLES"
        )
    key = tuple(name for name, *_, pos in sorted(found, key=lambda r: r[3]) if pos)
    if not key:
        raise NoPrimaryKeyError(
            f"table {table!r} has no primary key: changes could not be matched to rows;"
            " add one (ALTER TABLE … ADD PRIMARY KEY) and run `init` again"
        )
    clashing = [name for name, *_ in found if name in METADATA_NAMES]
    if clashing:
        raise MetadataNameError(
            f"table {table!r} has a column named {clashing[0]!r}, the name of an export"
            f" metadata column ({', '.join(METADATA_NAMES)}): the files could not tell the two"
            " apart; rename the column (ALTER TABLE … RENAME COLUMN) and run `init` again"
        )
    warnings = tuple(
        f"column {name!r} ({declared}) has no export type: exported as text"
        for name, _logical, declared, _pos in found
        if declared
    )
    columns = tuple(SourceColumn(name, logical) for name, logical, _d, _p in found)
    as_text = tuple(name for name, logical, declared, _p in found if declared or logical == "json")
    return TableShape(table, key, columns, warnings, as_text)


def _pg_logical(
    typname: str, typtype: str, element: str | None, element_type: str | None, typmod: int
) -> tuple[LogicalType, str]:
    """(logical type, the type's name when it is exported as text for lack of a mapping)."""
    if element is not None:
        inner, unknown = _pg_logical(element, element_type or "b", None, None, typmod)
        return ("text", f"{element}[]") if unknown else (f"list<{inner}>", "")
    if typtype == "e":
        return "text", ""  # enum labels
    if typname == "numeric":
        if typmod < 4:  # numeric without (p, s): no exact fixed-point type fits every value
            return "text", "numeric without precision"
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        return decimal_type(precision, scale), ""
    logical = _PG_TYPES.get(typname)
    return (logical, "") if logical else ("text", typname)


def _sqlite_columns(
    conn: Connection, table: str, previous: dict[str, LogicalType]
) -> list[tuple[str, LogicalType, str, int]]:
    quoted = conn.dialect.identifier_preparer.quote_identifier(table)
    rows = conn.exec_driver_sql(f"PRAGMA table_xinfo({quoted})").all()
    found = []
    for _cid, name, declared, _notnull, _default, pk, hidden in rows:
        if hidden == 1:  # a virtual table's hidden column, not data
            continue
        plain_text = (declared or "").strip().upper() == "TEXT"
        logical = previous.get(name) if plain_text and name in previous else None
        found.append((name, logical or logical_type_from_sql(declared or ""), "", int(pk)))
    return found
