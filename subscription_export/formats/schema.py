"""The export row shape: metadata columns first, then subscription columns, as Arrow types."""

from __future__ import annotations

import pyarrow as pa

from subscription_export.core.columns import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    LogicalType,
    SourceColumn,
    decimal_params,
    list_element,
)

UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")

ARROW_TYPES: dict[LogicalType, pa.DataType] = {
    "text": pa.string(),
    "integer": pa.int64(),
    "decimal": pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": UTC_TIMESTAMP,
    "time": pa.time64("us"),
    "uuid": pa.string(),
    "json": pa.string(),
    "binary": pa.binary(),
}


def arrow_type(logical: LogicalType) -> pa.DataType:
    """The exported Arrow type of a logical type (parametrized forms included)."""
    known = ARROW_TYPES.get(logical)
    if known is not None:
        return known
    decimal = decimal_params(logical)
    if decimal is not None:
        return pa.decimal128(*decimal)
    element = list_element(logical)
    if element is not None:
        return pa.list_(arrow_type(element))
    return pa.string()


METADATA_FIELDS: tuple[pa.Field, ...] = (
    pa.field("_lsn", pa.int64(), nullable=False),
    pa.field("_op", pa.string(), nullable=False),
    pa.field("_changed_at", UTC_TIMESTAMP, nullable=False),
    pa.field("_origin", pa.string(), nullable=False),
    pa.field("_deleted", pa.bool_(), nullable=False),
    pa.field("_schema_version", pa.int32(), nullable=False),
)

SCHEMA_VERSION_KEY = b"subscription_export.schema_version"
WINDOW_KEY = b"subscription_export.window"


def export_schema(
    columns: tuple[SourceColumn, ...], schema_version: int, window_key: str | None = None
) -> pa.Schema:
    """Arrow schema of one window's export; metadata is part of the hashed file content."""
    fields = [*METADATA_FIELDS, *(pa.field(c.name, arrow_type(c.type)) for c in columns)]
    metadata = {SCHEMA_VERSION_KEY: str(schema_version).encode()}
    if window_key is not None:
        metadata[WINDOW_KEY] = window_key.encode()
    return pa.schema(fields, metadata=metadata)
