"""A window's Parquet rows as the Python values the mappings take (Decimal, date, UTC datetime).

`RecordBatch.to_pylist` builds a timezone-aware datetime through a time-zone lookup per value,
which was most of the time it took to read a window for delivery (three timestamp columns of
the demo: 17 of 25 us a row). UTC microsecond columns are built here from their integers
instead (about 3x faster), equal to what `to_pylist` gives (tzinfo `datetime.UTC` rather than
`ZoneInfo("UTC")`: the same instant and offset, the same ISO text). Other columns, and
timestamps in other units or zones, go through `to_pylist`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "+00:00", "Z"})


def _utc_micros(kind: pa.DataType) -> bool:
    return (
        pa.types.is_timestamp(kind)
        and kind.unit == "us"
        and kind.tz is not None
        and kind.tz in _UTC_NAMES
    )


def _column_values(column: pa.Array) -> list[Any]:
    if not _utc_micros(column.type):
        return column.to_pylist()
    micros = column.cast(pa.int64()).to_pylist()
    return [None if us is None else _EPOCH + dt.timedelta(microseconds=us) for us in micros]


def python_rows(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """The batch's rows as dicts, in column order (as `batch.to_pylist()`)."""
    names = batch.schema.names
    columns = [_column_values(column) for column in batch.columns]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
