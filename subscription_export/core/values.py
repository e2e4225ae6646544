"""Normalize captured values to the export types, or say exactly why a value cannot be exported.

Timestamp rules (documented in docs/data.md): ISO-8601 strings with an offset or `Z` are
converted to UTC; naive strings and datetimes are taken as UTC; numbers are epoch
milliseconds. Decimals must be finite and fit numeric(18, 4) without rounding.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

from subscription_export.core.columns import DECIMAL_PRECISION, DECIMAL_SCALE, LogicalType

UTC = dt.UTC
_QUANTUM = Decimal(1).scaleb(-DECIMAL_SCALE)
_MAX_DECIMAL = Decimal(10) ** (DECIMAL_PRECISION - DECIMAL_SCALE)


class BadValue(ValueError):
    """A value that cannot be exported as its column's type."""


def to_utc(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, bool):
        raise BadValue(f"expected a timestamp, got boolean {value!r}")
    elif isinstance(value, int | float | Decimal):
        try:
            moment = dt.datetime.fromtimestamp(float(value) / 1000.0, tz=UTC)
        except (OverflowError, ValueError, OSError):
            raise BadValue(f"epoch milliseconds {value!r} out of range") from None
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise BadValue(f"unparseable timestamp {value!r}") from None
    else:
        raise BadValue(f"expected a timestamp, got {type(value).__name__}")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def to_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        raise BadValue(f"expected a date, got timestamp {value!r}")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            raise BadValue(f"unparseable date {value!r}") from None
    raise BadValue(f"expected a date, got {type(value).__name__}")


def to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal | float):
        raise BadValue(f"expected a decimal, got {type(value).__name__}")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise BadValue(f"non-numeric amount {value!r}") from None
    if not number.is_finite():
        raise BadValue(f"amount {value!r} is not finite")
    quantized = number.quantize(_QUANTUM)
    if quantized != number:
        raise BadValue(f"amount {value!r} has more than {DECIMAL_SCALE} decimal places")
    if abs(quantized) >= _MAX_DECIMAL:
        raise BadValue(
            f"amount {value!r} does not fit numeric({DECIMAL_PRECISION}, {DECIMAL_SCALE})"
        )
    return quantized


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise BadValue(f"expected an integer, got boolean {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal | float) and value == int(value):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise BadValue(f"expected an integer, got {value!r}")


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):  # SQLite stores booleans as 0/1
        return bool(value)
    raise BadValue(f"expected a boolean, got {value!r}")


def to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise BadValue(f"expected a number, got {value!r}")
    return float(value)


def to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise BadValue(f"expected text, got {type(value).__name__} {value!r}")


CONVERTERS = {
    "text": to_text,
    "integer": to_int,
    "decimal": to_decimal,
    "float": to_float,
    "boolean": to_bool,
    "date": to_date,
    "timestamp": to_utc,
}


def convert(value: Any, logical: LogicalType) -> Any:
    """None stays None; everything else is converted or raises BadValue."""
    if value is None:
        return None
    return CONVERTERS[logical](value)
