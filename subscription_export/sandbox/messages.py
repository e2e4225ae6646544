"""What a sandbox system reads and answers: requests, responses, API errors, JSON values.

Plain data, no HTTP plumbing: `server.py` turns sockets into `Request`s and `Response`s back
into bytes, and tests call the systems with them directly.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

UTC = dt.UTC


def utc_now() -> dt.datetime:
    return dt.datetime.now(UTC)


def iso_z(moment: dt.datetime) -> str:
    """ISO-8601 in UTC with a `Z` suffix, the one timestamp form the sandbox emits."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: sandbox timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def json_safe(value: Any) -> Any:
    """Decimals become strings (never floats), dates ISO strings, datetimes UTC `Z` strings."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return iso_z(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False  # close the connection without answering
    final: bool = True  # False: some batch item may succeed on retry; never stored for replay

    @classmethod
    def json(cls, status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return cls(status, body, (("Content-Type", "application/json"), *headers))

    def payload(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


DROP = Response(0, drop=True)


class ApiError(Exception):
    """Raised by handlers and validators; becomes a JSON error answer or a per-item error."""

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail

    def payload(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail}


def seconds_header(seconds: float) -> str:
    """A `Retry-After` value: whole seconds as an integer, else the shortest decimal."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
