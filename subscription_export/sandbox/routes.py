"""A system's API as routes: method, path pattern, fault endpoint name, handler."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from subscription_export.sandbox.messages import Request, Response

Handler = Callable[[Request, dict[str, str], Any, str | None], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: str  # fault plan name, e.g. "PUT /subscriptions"
    handler: Handler
    mutating: bool  # honours Idempotency-Key


def match_route(routes: Sequence[Route], request: Request) -> tuple[Route | None, dict[str, str]]:
    """The route and its path parameters; with no route, a non-empty dict means 405."""
    path_matched = False
    for route in routes:
        match = route.pattern.fullmatch(request.path)
        if match is None:
            continue
        path_matched = True
        if route.method == request.method:
            return route, {k: unquote(v) for k, v in match.groupdict().items()}
    return None, {"path": request.path} if path_matched else {}
