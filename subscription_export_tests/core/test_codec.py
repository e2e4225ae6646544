"""The one JSON codec (`core/codec.py`): exact decimals, UTC `Z` timestamps, canonical text."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subscription_export.core.codec import dumps, loads, to_jsonable

PLAIN_DECIMAL = re.compile(r"-?\d+(\.\d+)?")
BERLIN = dt.timezone(dt.timedelta(hours=2))


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_a_decimal_round_trips_exactly_in_plain_notation(value: Decimal) -> None:
    text = loads(dumps({"amount": value}))["amount"]

    assert isinstance(text, str)  # never a JSON number, so never a float on the way back
    assert PLAIN_DECIMAL.fullmatch(text), text
    assert Decimal(text) == value


def test_exponent_forms_are_written_out() -> None:
    assert to_jsonable(Decimal("1E+1")) == "10"
    assert to_jsonable(Decimal("1E-7")) == "0.0000001"
    assert to_jsonable(Decimal("12.5000")) == "12.5000"  # the scale is kept


def test_a_non_finite_decimal_is_refused() -> None:
    with pytest.raises(ValueError, match="not a finite decimal"):
        dumps(Decimal("NaN"))


@given(st.datetimes(timezones=st.just(dt.UTC)))
def test_a_timestamp_is_utc_with_microseconds_and_z(moment: dt.datetime) -> None:
    text = to_jsonable(moment)

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text
    assert dt.datetime.fromisoformat(text) == moment


def test_naive_means_utc_and_offsets_are_converted() -> None:
    assert to_jsonable(dt.datetime(2027, 1, 31, 8)) == "2027-01-31T08:00:00.000000Z"
    assert to_jsonable(dt.datetime(2027, 1, 31, 10, tzinfo=BERLIN)) == "2027-01-31T08:00:00.000000Z"
    assert to_jsonable(dt.date(2027, 1, 31)) == "2027-01-31"


def test_dumps_is_canonical() -> None:
    value = {"b": [1, Decimal("2.50")], "a": {"z": None, "y": frozenset({"q", "p"})}}

    assert dumps(value) == '{"a":{"y":["p","q"],"z":null},"b":[1,"2.50"]}'
    assert dumps(json.loads(dumps(value))) == dumps(value)
    assert loads(None) is None
