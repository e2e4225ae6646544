"""Text forms in CSV and JSON Lines: the fast paths write exactly what the general ones would."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given
from hypothesis import strategies as st

from subscription_export.formats.writers import _as_text, _json_string

UTC = dt.UTC
EDGES = [
    dt.datetime(1, 1, 1, tzinfo=UTC),
    dt.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    dt.datetime(1970, 1, 1, tzinfo=UTC),
    dt.datetime(2026, 3, 8, 7, 0, 0, 1, tzinfo=UTC),
    dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    None,
]


def test_utc_microsecond_timestamps_format_as_strftime_does() -> None:
    column = pa.array(EDGES, pa.timestamp("us", "UTC"))
    expected = pc.strftime(column, format="%Y-%m-%dT%H:%M:%SZ")
    assert _as_text(column).equals(expected)
    assert _as_text(column)[3].as_py() == "2026-03-08T07:00:00.000001Z"
    seconds = pa.array(EDGES[2:4], pa.timestamp("ms", "UTC"))  # other units: general path
    assert (
        _as_text(seconds).to_pylist()
        == pc.strftime(seconds, format="%Y-%m-%dT%H:%M:%SZ").to_pylist()
    )


@given(st.lists(st.one_of(st.none(), st.text()), max_size=30))
def test_json_string_literals_equal_json_dumps(values: list[str | None]) -> None:
    encoded = _json_string(pa.array(values, pa.string())).to_pylist()
    assert encoded == [None if v is None else json.dumps(v, ensure_ascii=False) for v in values]
