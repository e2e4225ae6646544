"""The subscription columns and their logical types, shared by capture and export."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# Exported decimals are numeric(18, 4): exact, never float (invariant 7).
DECIMAL_PRECISION = 18
DECIMAL_SCALE = 4

# A logical type is one of these names, or a parametrized form: `decimal(p,s)` (plain
# `decimal` is numeric(18, 4), the demo's amount) and `list<element>` (a PostgreSQL array).
# The spelling is stored in capture schema versions, so it must never change for a type.
BaseLogicalType = Literal[
    "text",
    "integer",
    "decimal",
    "float",
    "boolean",
    "date",
    "timestamp",
    "time",
    "uuid",
    "json",
    "binary",
]
LogicalType = str


@dataclass(frozen=True)
class SourceColumn:
    name: str
    type: LogicalType


# The export's metadata columns (formats/schema.py), ahead of the table's own in every file: a
# table column of one of these names is refused at `init`, since no reader could tell the two
# apart (a JSON object keeps the last of two equal keys, so JSON Lines would carry the
# column's value as `_op` or `_lsn`).
METADATA_NAMES = ("_lsn", "_op", "_changed_at", "_origin", "_deleted", "_schema_version")

# The base shape of `subscriptions`; columns added later are discovered at `init`.
BASE_COLUMNS: tuple[SourceColumn, ...] = (
    SourceColumn("id", "text"),
    SourceColumn("user_id", "text"),
    SourceColumn("name", "text"),
    SourceColumn("category", "text"),
    SourceColumn("amount", "decimal"),
    SourceColumn("currency", "text"),
    SourceColumn("billing_cycle", "text"),
    SourceColumn("status", "text"),
    SourceColumn("next_billing_date", "date"),
    SourceColumn("timezone", "text"),
    SourceColumn("created_at", "timestamp"),
    SourceColumn("updated_at", "timestamp"),
    SourceColumn("version", "integer"),
)
BASE_TYPES = {c.name: c.type for c in BASE_COLUMNS}

BILLING_CYCLES = ("daily", "weekly", "monthly", "quarterly", "yearly")
STATUSES = ("active", "paused", "cancelled", "past_due")


def decimal_type(precision: int, scale: int) -> LogicalType:
    """`decimal` for the default numeric(18, 4) (the spelling registered before), else
    `decimal(p,s)`."""
    if (precision, scale) == (DECIMAL_PRECISION, DECIMAL_SCALE):
        return "decimal"
    return f"decimal({precision},{scale})"


def decimal_params(logical: LogicalType) -> tuple[int, int] | None:
    """(precision, scale) of a decimal logical type, else None."""
    if logical == "decimal":
        return DECIMAL_PRECISION, DECIMAL_SCALE
    match = _DECIMAL.fullmatch(logical)
    return (int(match[1]), int(match[2])) if match else None


def list_element(logical: LogicalType) -> LogicalType | None:
    """The element type of `list<element>`, else None."""
    if logical.startswith("list<") and logical.endswith(">"):
        return logical[5:-1]
    return None


_DECIMAL = re.compile(r"decimal\(([0-9]+),([0-9]+)\)")
_SQL_DECIMAL = re.compile(r"\(\s*([0-9]+)\s*(?:,\s*([0-9]+)\s*)?\)")


def logical_type_from_sql(declared: str) -> LogicalType:
    """Map a declared SQLite type to a logical type (SQLite has no types but the declared
    names: `TEXT DECIMAL(10, 2)` is a decimal stored as text, so values stay as written)."""
    t = declared.lower()
    words = set(re.findall(r"[a-z]+", t))
    if "timestamp" in t or "datetime" in t:
        return "timestamp"
    if "date" in words:
        return "date"
    if "time" in words:
        return "time"
    if "uuid" in words:
        return "uuid"
    if words & {"json", "jsonb"}:
        return "json"
    if "blob" in words or "bytea" in words:
        return "binary"
    if "bool" in t:
        return "boolean"
    if "int" in t or t in ("serial", "bigserial"):
        return "integer"
    if "numeric" in t or "decimal" in t:
        params = _SQL_DECIMAL.search(t)
        if params and int(params[1]) <= 38:
            return decimal_type(int(params[1]), int(params[2] or 0))
        return "decimal"
    if "real" in t or "floa" in t or "doub" in t:
        return "float"
    return "text"
