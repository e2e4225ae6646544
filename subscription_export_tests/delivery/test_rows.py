"""Rows read for delivery equal `to_pylist` (the fast path for UTC timestamps changes no value)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pyarrow as pa

from subscription_export.delivery.rows import python_rows

UTC = dt.UTC


def test_rows_equal_to_pylist_for_every_timestamp_shape() -> None:
    moments = [
        dt.datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC),
        None,
        dt.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # before the epoch
        dt.datetime(9999, 12, 30, 23, 59, 59, tzinfo=UTC),
    ]
    batch = pa.RecordBatch.from_pydict(
        {
            "_lsn": pa.array([1, 2, 3, 4], pa.int64()),
            "utc_us": pa.array(moments, pa.timestamp("us", tz="UTC")),
            "utc_ms": pa.array(moments, pa.timestamp("ms", tz="UTC")),  # not the fast path
            "berlin": pa.array(moments, pa.timestamp("us", tz="Europe/Berlin")),
            "naive": pa.array([m and m.replace(tzinfo=None) for m in moments], pa.timestamp("us")),
            "amount": pa.array([Decimal("1.2300"), None, Decimal("0"), Decimal("-5")]),
            "day": pa.array([dt.date(2026, 4, 1), None, dt.date(1, 1, 1), None], pa.date32()),
        }
    )

    rows = python_rows(batch)

    assert rows == batch.to_pylist()
    assert list(rows[0]) == batch.schema.names
    assert rows[0]["utc_us"].utcoffset() == dt.timedelta(0)
    assert rows[0]["utc_us"].isoformat() == "2026-03-01T12:00:07+00:00"
    assert rows[0]["berlin"].tzinfo == ZoneInfo("Europe/Berlin")  # other zones as before
    assert rows[1]["utc_us"] is None
