"""Pydantic validation errors as short phrases for one-line `ConfigError`s.

Configuration files are validated by pydantic models; their errors read as `key 'batch_size'
must be positive, got 0`, not as pydantic's multi-line table, so the CLI can print them on one
line. Each caller says where the key is (file, table); this module says what is wrong with it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict
from pydantic_core import ErrorDetails

# Strict: a TOML `2.5` or `true` is refused, never rounded or counted as 1.
Count = Annotated[int, Strict(), Field(gt=0)]
PositiveNumber = Annotated[float, Strict(), Field(gt=0)]
NonNegativeNumber = Annotated[float, Strict(), Field(ge=0)]


def problem(error: ErrorDetails, allowed: str | None = None) -> str:
    """What is wrong with one value, as the rest of a sentence starting with its key.

    `allowed` (e.g. a field's description) names the values accepted where pydantic's error
    type alone does not say it (a pattern, a table, a required key).
    """
    kind, got = error["type"], _shown(error["input"])
    if kind == "missing":
        return f"is required ({allowed})" if allowed else "is required"
    if kind.startswith("int_"):
        return f"must be a whole number, got {got}"
    if kind.startswith("float_"):
        return f"must be a number, got {got}"
    if kind == "greater_than":
        return f"must be positive, got {_number(error['input'])}"
    if kind == "greater_than_equal":
        return f"must not be negative, got {_number(error['input'])}"
    if kind in ("literal_error", "enum"):
        expected = error.get("ctx", {}).get("expected", "")
        return f"must be one of {allowed or expected.replace(' or ', ', ')}, got {got}"
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if allowed:
        return f"must be {allowed}, got {got}"
    return f"{error['msg'][:1].lower()}{error['msg'][1:]}, got {got}"


def _shown(value: object) -> str:
    return repr(value) if not isinstance(value, dict) else "a table"


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
