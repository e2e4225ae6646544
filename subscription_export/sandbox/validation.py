"""Field checks shared by the systems: a bad field is a 422 `invalid_field` answer."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from subscription_export.core.columns import STATUSES
from subscription_export.sandbox.messages import ApiError

_CURRENCY = re.compile(r"^[A-Z]{3}$")


def require_str(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(422, "invalid_field", f"{name} must be a non-empty string")
    return value


def require_decimal(record: Mapping[str, Any], name: str, *, positive: bool = False) -> Decimal:
    value = record.get(name)
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"{name} must be a decimal string, got {value!r}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ApiError(422, "invalid_field", f"{name}={value!r} is not a decimal") from None
    if not number.is_finite() or (positive and number <= 0):
        raise ApiError(422, "invalid_field", f"{name}={value!r} is out of range")
    return number


def require_currency(record: Mapping[str, Any], name: str = "currency") -> str:
    value = record.get(name)
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise ApiError(422, "invalid_field", f"{name}={value!r} is not an ISO 4217 code")
    return value


def require_version(record: Mapping[str, Any], name: str = "version") -> int:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ApiError(422, "invalid_field", f"{name} must be a non-negative integer")
    return value


def require_date(record: Mapping[str, Any], name: str) -> dt.date:
    value = record.get(name)
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ApiError(422, "invalid_field", f"{name}={value!r} is not an ISO date")


def require_choice(record: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = record.get(name)
    if value not in choices:
        raise ApiError(422, "invalid_field", f"{name}={value!r} is not one of {choices}")
    return str(value)


def require_subscription(
    record: Mapping[str, Any], *, customer: str, plan: str, price: str
) -> None:
    """What every records system requires of a subscription, under its own field names."""
    require_str(record, customer)
    require_str(record, plan)
    require_decimal(record, price)
    require_currency(record)
    require_choice(record, "status", STATUSES)
    require_version(record)
