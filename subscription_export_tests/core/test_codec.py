"""The one JSON codec (`core/codec.py`): exact decimals, UTC `Z` timestamps, canonical text."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal
from typing import Any

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


def test_keys_are_text_and_nested_values_rendered_at_any_depth() -> None:
    """The dict fast path (plain values inline) keeps `str(key)` and renders what is nested."""
    value = {1: Decimal("1.5"), "b": {2: dt.date(2027, 1, 31), "c": [dt.datetime(2027, 1, 1)]}}

    assert dumps(value) == '{"1":"1.5","b":{"2":"2027-01-31","c":["2027-01-01T00:00:00.000000Z"]}}'
    assert dumps({"x": float("nan")}) == '{"x":NaN}'
    with pytest.raises(ValueError):
        dumps({"x": float("nan")}, allow_nan=False)


def test_a_renderer_renders_each_object_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Renderer` gives `dumps`' text, computing it once per object (by identity): a batch of
    decisions writes the same record into the sync base and the audit rows."""
    from subscription_export.core import codec

    calls: list[Any] = []

    def counting(value: Any, *, allow_nan: bool = True) -> str:
        calls.append(value)
        return dumps(value, allow_nan=allow_nan)

    monkeypatch.setattr(codec, "dumps", counting)
    render = codec.Renderer()
    record = {"amount": Decimal("9.90"), "at": dt.datetime(2027, 1, 1, tzinfo=dt.UTC)}
    twin = dict(record)

    assert render(record) == render(record) == dumps(record)
    assert render(twin) == dumps(record)
    assert render(None) == dumps(None) == "null"
    assert calls == [record, twin]  # the twin is another object: rendered on its own
