"""The subscription columns and their logical types, shared by capture and export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Exported decimals are numeric(18, 4): exact, never float (invariant 7).
DECIMAL_PRECISION = 18
DECIMAL_SCALE = 4

LogicalType = Literal["text", "integer", "decimal", "float", "boolean", "date", "timestamp"]


@dataclass(frozen=True)
class SourceColumn:
    name: str
    type: LogicalType


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


def logical_type_from_sql(declared: str) -> LogicalType:
    """Map a declared SQL type (SQLite affinity rules, PostgreSQL type names) to a logical type."""
    t = declared.lower()
    if "timestamp" in t or "datetime" in t:
        return "timestamp"
    if t == "date":
        return "date"
    if "bool" in t:
        return "boolean"
    if "int" in t or t in ("serial", "bigserial"):
        return "integer"
    if "numeric" in t or "decimal" in t or "money" in t:
        return "decimal"
    if "real" in t or "floa" in t or "doub" in t:
        return "float"
    return "text"
