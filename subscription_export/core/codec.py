"""The one JSON codec for state we write ourselves: audit log, sync state, dead letters.

Rendering (so two writers of the same value always produce the same text):

* `Decimal`: exact, plain notation (`format(v, "f")`): never an exponent (`1E+1` is `"10"`),
  never a float. A non-finite decimal is refused: money is never NaN (invariant 7).
* `datetime`: ISO-8601 in UTC with microseconds and `Z`; a naive datetime is UTC
  (DESIGN.md invariant 6: every stored time is UTC, SQLite just drops the tzinfo).
* `date`: ISO (`2027-01-31`).
* mappings keep string keys, sequences become lists, sets become lists sorted by their
  rendering; anything else without a JSON type is rendered with `str`.

`dumps` is canonical (sorted keys, compact separators), so equal values give equal text and
stored JSON can be compared as text. `loads` is plain JSON; `None` (a NULL column) stays None.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["Renderer", "dumps", "loads", "timestamp_text", "to_jsonable"]


def timestamp_text(moment: dt.datetime) -> str:
    """`2027-01-31T08:00:00.000000Z`; naive means UTC."""
    if moment.tzinfo is dt.UTC:  # the common case, without the conversion
        return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
    plain = aware.astimezone(dt.UTC).replace(tzinfo=None)
    return plain.isoformat(timespec="microseconds") + "Z"  # isoformat pads the year, %Y does not


def decimal_text(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"{value!r} is not a finite decimal")
    return format(value, "f")


_PLAIN = frozenset({type(None), bool, int, float, str})


def to_jsonable(value: Any) -> Any:
    """`value` with every non-JSON type rendered as described in the module docstring."""
    # exact types first (a reconcile renders ~10 records per edit); subclasses below
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict:  # plain values inline: a call per value cost more than the rest
        return {
            k if type(k) is str else str(k): v if type(v) in _PLAIN else to_jsonable(v)
            for k, v in value.items()
        }
    if kind is Decimal:
        return decimal_text(value)
    if kind is dt.datetime:
        return timestamp_text(value)
    if kind is dt.date:
        return value.isoformat()
    return _to_jsonable_by_class(value)


def _to_jsonable_by_class(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, dt.datetime):  # before date: a datetime is a date
        return timestamp_text(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((to_jsonable(v) for v in value), key=dumps)
    return str(value)


# Built once: `json.dumps` with any option builds a new encoder on every call.
_ENCODERS = {
    allow: json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=allow)
    for allow in (True, False)
}


def dumps(value: Any, *, allow_nan: bool = True) -> str:
    """Canonical JSON text: sorted keys, no spaces, ASCII only."""
    return _ENCODERS[allow_nan].encode(to_jsonable(value))


class Renderer:
    """`dumps` that renders each object once: a batch of decisions writes the same record into
    several rows (the merged record is the sync base's held record and the audit's merged one;
    the feed record is the base's and the audit's remote). By identity, so use it only while
    the objects are neither changed nor freed (it keeps them alive meanwhile: give it records
    that live that long anyway - keeping a batch's throwaway objects alive brought a full
    garbage collection, ~100 ms, into a 2,000-edit reconcile)."""

    def __init__(self) -> None:
        # two flat maps, no (object, text) pair per entry: a batch renders thousands of
        # records, and every allocated container brings the next garbage collection closer
        self._texts: dict[int, str] = {}
        self._kept: dict[int, Any] = {}  # the objects, alive so that no id is reused

    def __call__(self, value: Any) -> str:
        if value is None:
            return "null"
        key = id(value)
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = dumps(value)
            self._kept[key] = value
        return text


def loads(text: str | bytes | None) -> Any:
    return None if text is None else json.loads(text)
