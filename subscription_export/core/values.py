"""Normalize captured values to the export types, or say exactly why a value cannot be exported.

Timestamp rules (documented in docs/data.md): ISO-8601 strings with an offset or `Z` are
converted to UTC; naive strings and datetimes are taken as UTC; numbers are epoch
milliseconds. Decimals must be finite and fit numeric(18, 4) without rounding; integers fit
64 bits; floats are finite; text is valid Unicode without NUL (PostgreSQL text cannot hold it).
Every value that does not convert raises BadValue, never another error: the row is quarantined
and the window goes on (invariant 8).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from decimal import Context, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from subscription_export.core.columns import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    LogicalType,
    decimal_params,
    list_element,
)

UTC = dt.UTC
_INT64 = range(-(2**63), 2**63)
_ASCII_INTEGER = re.compile(r"-?[0-9]+")  # not `isdigit`: it accepts '²' and '٣'


class BadValue(ValueError):
    """A value that cannot be exported as its column's type."""


def shown(value: Any, limit: int = 80) -> str:
    """The value's repr for a reason text, cut short (a reason must stay readable and storable)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4300-digit str() limit
        text = f"<{type(value).__name__} of more than 4300 digits>"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def to_utc(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, bool):
        raise BadValue(f"expected a timestamp, got boolean {shown(value)}")
    elif isinstance(value, int | float | Decimal):
        try:
            moment = dt.datetime.fromtimestamp(float(value) / 1000.0, tz=UTC)
        except (OverflowError, ValueError, OSError):
            raise BadValue(f"epoch milliseconds {shown(value)} out of range") from None
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise BadValue(f"unparseable timestamp {shown(value)}") from None
    else:
        raise BadValue(f"expected a timestamp, got {type(value).__name__}")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise BadValue(f"timestamp {shown(value)} is out of range in UTC") from None


def to_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        raise BadValue(f"expected a date, got timestamp {shown(value)}")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            raise BadValue(f"unparseable date {shown(value)}") from None
    raise BadValue(f"expected a date, got {type(value).__name__}")


def to_decimal(
    value: Any, precision: int = DECIMAL_PRECISION, scale: int = DECIMAL_SCALE
) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal | float):
        raise BadValue(f"expected a decimal, got {type(value).__name__}")
    try:
        number = _as_decimal(value)
    except InvalidOperation:
        raise BadValue(f"non-numeric amount {shown(value)}") from None
    if not number.is_finite():
        raise BadValue(f"amount {shown(value)} is not finite")
    limit, quantum = _decimal_bounds(precision, scale)
    # Before quantizing: 1e30 would need more digits than the decimal context has.
    if abs(number) >= limit:
        raise BadValue(f"amount {shown(value)} does not fit numeric({precision}, {scale})")
    # Below 10**(p-s) with s places: p <= 38 digits, within the 40-digit context. A context
    # object, not `localcontext()`: entering one cost more than the rest of this function.
    quantized = number.quantize(quantum, context=_QUANTIZE)
    if quantized != number:
        raise BadValue(f"amount {shown(value)} has more than {scale} decimal places")
    return quantized


_QUANTIZE = Context(prec=40)


@lru_cache(maxsize=64)
def _decimal_bounds(precision: int, scale: int) -> tuple[Decimal, Decimal]:
    """10**(precision - scale), the first value that does not fit, and the quantum 10**-scale."""
    return Decimal(10) ** (precision - scale), Decimal(1).scaleb(-scale)


def _as_decimal(value: int | str | Decimal | float) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str):
        return Decimal(value.strip())
    if isinstance(value, float):
        return Decimal(str(value))  # the float's shortest repr, not its binary expansion
    return Decimal(value)  # an int: exact, without str()'s 4300-digit limit


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise BadValue(f"expected an integer, got boolean {shown(value)}")
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, Decimal | float):
        if not math.isfinite(value):
            raise BadValue(f"expected an integer, got {shown(value)}")
        if abs(value) >= 2**63:  # before int(): 9e999999 would make a million-digit int
            raise BadValue(f"integer {shown(value)} does not fit a 64-bit integer")
        if value == int(value):
            number = int(value)
    elif isinstance(value, str) and _ASCII_INTEGER.fullmatch(value.strip()):
        number = int(value)
    if number is None:
        raise BadValue(f"expected an integer, got {shown(value)}")
    if number not in _INT64:
        raise BadValue(f"integer {shown(value)} does not fit a 64-bit integer")
    return number


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):  # SQLite stores booleans as 0/1
        return bool(value)
    raise BadValue(f"expected a boolean, got {shown(value)}")


def to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise BadValue(f"expected a number, got {shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond a double's range
        number = math.inf
    if not math.isfinite(number):
        raise BadValue(f"number {shown(value)} is not finite as a 64-bit float")
    return number


def to_text(value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"expected text, got {type(value).__name__} {shown(value)}")
    if "\x00" in value:
        raise BadValue(f"text {shown(value)} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON escape such as "\ud800"
        raise BadValue(f"text {shown(value)} is not valid Unicode ({exc.reason})") from None
    return value


def to_time(value: Any) -> dt.time:
    """A time of day (PostgreSQL `time`: `HH:MM:SS[.ffffff]`), without a zone."""
    if isinstance(value, dt.time):
        return value
    if isinstance(value, str):
        try:
            moment = dt.time.fromisoformat(value.strip())
        except ValueError:
            raise BadValue(f"unparseable time {shown(value)}") from None
        if moment.tzinfo is None:
            return moment
    raise BadValue(f"expected a time of day, got {shown(value)}")


def to_uuid(value: Any) -> str:
    """The canonical form: lower-case hex with hyphens (as PostgreSQL prints a uuid)."""
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            pass
    raise BadValue(f"expected a UUID, got {shown(value)}")


def to_json_text(value: Any) -> str:
    """Canonical JSON text: keys sorted, no spaces, numbers exactly as written. The capture
    stores json/jsonb columns as their text (the trigger does so on PostgreSQL), so a JSON
    string value is never mistaken for a JSON document."""
    if not isinstance(value, str):
        raise BadValue(f"expected JSON text, got {type(value).__name__} {shown(value)}")
    try:
        parsed = json.loads(value, parse_float=Decimal)
    except (ValueError, RecursionError):
        raise BadValue(f"invalid JSON {shown(value)}") from None
    return to_text(_canonical_json(parsed))


def _canonical_json(value: Any) -> str:
    if isinstance(value, dict):
        items = (
            f"{json.dumps(k, ensure_ascii=False)}:{_canonical_json(v)}" for k, v in value.items()
        )
        return "{" + ",".join(sorted(items)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical_json(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def to_binary(value: Any) -> bytes:
    """Bytes from their capture form, `\\x` + hex (PostgreSQL's bytea text; the SQLite
    trigger writes the same, since JSON cannot hold a BLOB)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.startswith("\\x"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            pass
    raise BadValue(f"expected bytes as \\x hex, got {shown(value)}")


CONVERTERS = {
    "text": to_text,
    "integer": to_int,
    "decimal": to_decimal,
    "float": to_float,
    "boolean": to_bool,
    "date": to_date,
    "timestamp": to_utc,
    "time": to_time,
    "uuid": to_uuid,
    "json": to_json_text,
    "binary": to_binary,
}


def _convert_typed(value: Any, logical: LogicalType) -> Any:
    converter = CONVERTERS.get(logical)
    if converter is not None:
        return converter(value)
    decimal = decimal_params(logical)
    if decimal is not None:
        return to_decimal(value, *decimal)
    element = list_element(logical)
    if element is not None:
        if not isinstance(value, list):
            raise BadValue(f"expected a list, got {shown(value)}")
        return [None if v is None else _convert_typed(v, element) for v in value]
    return to_text(value)  # an unknown spelling: exported as text, as `init` warned


def convert(value: Any, logical: LogicalType) -> Any:
    """None stays None; everything else is converted or raises BadValue."""
    if value is None:
        return None
    try:
        return _convert_typed(value, logical)
    except BadValue:
        raise
    except (ArithmeticError, ValueError, OverflowError) as exc:
        # A converter missed a case: the value is still bad data, not a reason to block the
        # window on every retry.
        raise BadValue(f"{shown(value)} does not convert to {logical}: {exc!r}") from None
