"""Item-level HTTP retries: exponential backoff with full jitter, a delay cap and a time budget.

Why these choices:

* Full jitter (`uniform(0, min(cap, base * 2**(n-1)))`, as tenacity's `wait_random_exponential`)
  spreads the retries of many clients that failed together, so a recovering server is not hit
  by synchronized waves.
* `Retry-After` from the server is honoured (it knows when it will take traffic again), but
  capped by the delay cap so a hostile or buggy header cannot stall a run.
* A total budget bounds the time one operation may take: the retry loop stops when the next
  sleep would end past the budget (tenacity's `stop_before_delay`), and after `max_attempts`.
* Only failures that may succeed later are retried: 429, 500, 502, 503, 504, connection errors,
  timeouts, and 409 `request_in_progress` (the server still holds our idempotency key).
  Everything else (400, 404, 409 stale version, 422, ...) is a `PermanentDeliveryError` at
  once: repeating the same request cannot change the answer.

Sleep, clock and random source are injectable so tests run instantly and deterministically.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import requests
import tenacity

from subscription_export.core.causes import errno_phrase, os_error_in
from subscription_export.core.secrets import mask_in_text, mask_url
from subscription_export.core.stopping import stoppable_sleep

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
IN_FLIGHT_ERROR = "request_in_progress"


class DeliveryError(Exception):
    """A request (or batch item) that did not succeed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        # Messages quote request URLs (requests keeps `user:password@` in `response.url`) and
        # end up printed and stored in dead letters: masked once, here.
        super().__init__(mask_in_text(message))
        self.status = status
        self.attempts = 0  # set by RetryPolicy.call when it gives up


class RetryableDeliveryError(DeliveryError):
    """May succeed if repeated; `retry_after_s` is the server's hint, if it gave one."""

    def __init__(
        self, message: str, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status)
        self.retry_after_s = retry_after_s


class PermanentDeliveryError(DeliveryError):
    """Repeating the request cannot help; the item becomes a dead letter."""


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        seconds = moment.timestamp() - now()
    return max(0.0, seconds)


def is_retryable(status: int, error_code: str | None = None) -> bool:
    return status in RETRYABLE_STATUSES or (status == 409 and error_code == IN_FLIGHT_ERROR)


def error_code(response: requests.Response) -> str | None:
    """The `error` of a JSON error answer, if it has one."""
    try:
        payload = response.json()
    except ValueError:
        return None
    return payload.get("error") if isinstance(payload, dict) else None


def raise_for_delivery(
    response: requests.Response, *, ok_statuses: frozenset[int] = frozenset()
) -> None:
    """Classify an HTTP answer: return on success, raise retryable or permanent otherwise."""
    status = response.status_code
    if 200 <= status < 300 or status in ok_statuses:
        return
    code = error_code(response)
    message = (
        f"HTTP {status}"
        + (f" {code}" if code else "")
        + f" from {response.request.method} {response.url}"
    )
    if is_retryable(status, code):
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise RetryableDeliveryError(message, status, retry_after)
    detail = response.text[:300]
    raise PermanentDeliveryError(f"{message}: {detail}", status)


def send(call: Callable[[], requests.Response]) -> requests.Response:
    """Run one HTTP call, turning transport failures (reset, timeout) into retryable errors."""
    try:
        return call()
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise RetryableDeliveryError(transport_failure(exc)) from exc
    except requests.exceptions.ChunkedEncodingError as exc:
        raise RetryableDeliveryError(f"truncated answer: {exc}") from exc
    except requests.TooManyRedirects as exc:
        raise PermanentDeliveryError(redirect_refused(exc)) from None


def redirect_refused(exc: requests.TooManyRedirects) -> str:
    """Delivery sessions follow no redirect (`max_redirects = 0`): requests would re-send a
    PUT, POST or DELETE answered 301/302/303 as a GET, and that GET's 200 (an auth proxy's
    login page) or 404 would pass for a change the system never received."""
    response = exc.response
    if response is None:
        return f"redirect not followed: {exc}"
    request = response.request
    location = response.headers.get("Location", "?")
    return (
        f"HTTP {response.status_code} redirect to {location} from {request.method}"
        f" {response.url}: not followed (the change would not reach the system);"
        " set the destination's base_url to the address that answers"
    )


def transport_failure(exc: requests.RequestException) -> str:
    """'ConnectionError: connection refused (ECONNREFUSED, ...): POST http://user:***@host/path'
    rather than urllib3's nested repr: the operating system's reason, then the request (its
    password masked). Without an errno (a reset by the peer, a read timeout) as requests says."""
    found = os_error_in(exc)
    request = exc.request
    if found is None or request is None:
        return f"{type(exc).__name__}: {exc}"
    target = f"{request.method} {mask_url(str(request.url))}"
    return f"{type(exc).__name__}: {errno_phrase(found)}: {target}"


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one operation. Defaults suit production; tests shrink them."""

    max_attempts: int = 8
    base_delay_s: float = 0.25
    max_delay_s: float = 30.0
    budget_s: float = 120.0
    sleep: Callable[[float], None] = stoppable_sleep  # a stop signal cuts the backoff short
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.budget_s < 0:
            raise ValueError("delays and budget must not be negative")

    def backoff_s(self, attempt_number: int) -> float:
        """Full-jitter delay after the `attempt_number`-th failed attempt (1-based)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt_number - 1))
        return self.rng.uniform(0.0, ceiling)

    def delay_s(self, attempt_number: int, error: BaseException | None) -> float:
        """The server's `Retry-After` (capped) when given, else full-jitter backoff."""
        hint = getattr(error, "retry_after_s", None)
        if hint is not None:
            return min(float(hint), self.max_delay_s)
        return self.backoff_s(attempt_number)

    def retrying(self) -> tenacity.Retrying:
        """A fresh tenacity loop; its budget starts now.

        Use as `for attempt in policy.retrying(): with attempt: ...`. On exhaustion the last
        `RetryableDeliveryError` is re-raised; a `PermanentDeliveryError` is raised at once.
        """
        started = self.clock()

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return self.delay_s(state.attempt_number, error)

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= self.max_attempts:
                return True
            return self.clock() - started + state.upcoming_sleep > self.budget_s

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableDeliveryError),
            wait=wait,
            stop=stop,
            sleep=self.sleep,
            reraise=True,
        )

    def call(self, fn: Callable[[], T]) -> tuple[T, int]:
        """Run `fn` under this policy; returns its result and the number of attempts made.

        A final `DeliveryError` carries the attempts made in its `attempts` attribute.
        """
        attempts = 0
        try:
            for attempt in self.retrying():
                with attempt:
                    attempts += 1
                    result = fn()
        except DeliveryError as exc:
            exc.attempts = attempts
            raise
        return result, attempts
