"""Seedable fault injection for the sandbox HTTP servers.

Delivery code is only trustworthy if it has been run against the failures real APIs produce:
rate limiting with `Retry-After`, 5xx answers, sockets closed mid-request, answers that never
arrive in time and batches where some items fail. A `FaultPlan` decides, per request, which of
these happens. Every endpoint draws from its own `random.Random` stream seeded from
`(seed, endpoint)`, so a sequential client sees the same faults on every run; with concurrent
clients the order in which requests reach the stream (and so which request gets which fault)
depends on thread scheduling, but the rates do not.

Request-level faults are mutually exclusive and drawn with one number per request:

* `rate_limit` - answer 429 with `Retry-After: retry_after_s`; nothing is applied.
* `error` - answer one of `error_statuses` (5xx); nothing is applied.
* `reset` - close the socket without an answer; nothing is applied.
* `lost_response` - apply the request, then close the socket without an answer (the client
  cannot know it succeeded; only idempotency keys make its retry safe).
* `timeout` - hold the request for `timeout_s` (longer than the client's timeout) before
  applying and answering; a retry arriving meanwhile meets the in-flight idempotency key.

`latency_s` is added to every request, and `item_failure` is the per-item probability that a
batch item (ERP, CRM, accounting) fails with a 500 while the rest of the batch succeeds.
Items of the ERP's `$batch` also draw the request-level faults of their single endpoint
(`PUT /subscriptions`, `DELETE /subscriptions`), as item answers (see `systems.py`).

`item_script` scripts the answers of one record's next batch items: `{"s1": [503]}` makes the
next item with id `s1` fail with 503 (nothing applied), then the list is used up and the item
goes through. Tests use it to fail exactly one item of a batch, transiently or for good.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

FaultKind = Literal["none", "rate_limit", "error", "reset", "lost_response", "timeout"]

# Request-level faults in the order their probability bands are laid out on [0, 1).
_REQUEST_FAULTS: tuple[FaultKind, ...] = (
    "rate_limit",
    "error",
    "reset",
    "lost_response",
    "timeout",
)


@dataclass(frozen=True)
class FaultSpec:
    """Fault probabilities and parameters for one endpoint (or the default for all)."""

    rate_limit: float = 0.0
    retry_after_s: float = 1.0
    error: float = 0.0
    error_statuses: tuple[int, ...] = (500, 503)
    reset: float = 0.0
    lost_response: float = 0.0
    timeout: float = 0.0
    timeout_s: float = 5.0
    latency_s: float = 0.0
    item_failure: float = 0.0

    def __post_init__(self) -> None:
        for name in (*_REQUEST_FAULTS, "item_failure"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault probability {name}={value} is not within [0, 1]")
        total = sum(getattr(self, name) for name in _REQUEST_FAULTS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"request fault probabilities add up to {total:.3f} > 1")
        for name in ("retry_after_s", "timeout_s", "latency_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not self.error_statuses or any(not 500 <= s <= 599 for s in self.error_statuses):
            raise ValueError(f"error_statuses must be 5xx codes, got {self.error_statuses}")

    @property
    def refuses_any(self) -> bool:
        """Whether some request-level fault can happen (else its draw can be skipped)."""
        return any(getattr(self, kind) > 0.0 for kind in _REQUEST_FAULTS)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_statuses"] = list(self.error_statuses)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        values = dict(data)
        if "error_statuses" in values:
            values["error_statuses"] = tuple(int(s) for s in values["error_statuses"])
        return cls(**values)


@dataclass(frozen=True)
class Fault:
    """What happens to one request."""

    kind: FaultKind
    status: int | None = None
    retry_after_s: float | None = None
    hold_s: float = 0.0
    latency_s: float = 0.0


NO_FAULT = Fault("none")


@dataclass
class FaultPlan:
    """Per-endpoint fault specs with reproducible random streams.

    Endpoints are named `"METHOD /route"` with path parameters left out, e.g.
    `"PUT /subscriptions"`, `"POST /batch"`, `"POST /journal/batch"`, `"GET /changes"`.
    """

    default: FaultSpec = field(default_factory=FaultSpec)
    endpoints: Mapping[str, FaultSpec] = field(default_factory=dict)
    seed: int = 0
    item_script: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, random.Random] = {}
        for ident, statuses in self.item_script.items():
            if any(not 400 <= s <= 599 for s in statuses):
                raise ValueError(f"item_script[{ident!r}] must list 4xx/5xx codes: {statuses}")
        self._script_left = {k: list(v) for k, v in self.item_script.items()}

    def scripted_item(self, ident: object) -> int | None:
        """The scripted status of the next batch item with id `ident` (consumed), or None."""
        with self._lock:
            left = self._script_left.get(str(ident))
            return left.pop(0) if left else None

    def spec_for(self, endpoint: str) -> FaultSpec:
        return self.endpoints.get(endpoint, self.default)

    def _stream(self, endpoint: str) -> random.Random:
        stream = self._streams.get(endpoint)
        if stream is None:
            stream = self._streams[endpoint] = random.Random(f"{self.seed}:{endpoint}")
        return stream

    def decide(self, endpoint: str) -> Fault:
        """Draw the fault for one request to `endpoint`."""
        spec = self.spec_for(endpoint)
        if not spec.refuses_any:  # nothing to draw: skipping the draw changes no outcome
            return Fault("none", latency_s=spec.latency_s)
        with self._lock:
            stream = self._stream(endpoint)
            draw = stream.random()
            status = stream.choice(spec.error_statuses)
        threshold = 0.0
        for kind in _REQUEST_FAULTS:
            threshold += getattr(spec, kind)
            if draw < threshold:
                return Fault(
                    kind,
                    status=429 if kind == "rate_limit" else status if kind == "error" else None,
                    retry_after_s=spec.retry_after_s if kind == "rate_limit" else None,
                    hold_s=spec.timeout_s if kind == "timeout" else 0.0,
                    latency_s=spec.latency_s,
                )
        return Fault("none", latency_s=spec.latency_s)

    def item_fails(self, endpoint: str) -> bool:
        """Draw whether one batch item sent to `endpoint` fails."""
        rate = self.spec_for(endpoint).item_failure
        if rate == 0.0:  # each endpoint draws from its own stream: skipping it changes nothing
            return False
        with self._lock:
            draw = self._stream(endpoint + "#items").random()
        return draw < rate

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "default": self.default.to_json(),
            "endpoints": {name: spec.to_json() for name, spec in self.endpoints.items()},
            "item_script": {k: list(v) for k, v in self.item_script.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultPlan:
        unknown = set(data) - {"seed", "default", "endpoints", "item_script"}
        if unknown:
            raise ValueError(f"unknown fault plan keys: {sorted(unknown)}")
        return cls(
            default=FaultSpec.from_json(data.get("default") or {}),
            endpoints={
                name: FaultSpec.from_json(spec)
                for name, spec in (data.get("endpoints") or {}).items()
            },
            seed=int(data.get("seed", 0)),
            item_script={
                str(k): tuple(int(s) for s in v) for k, v in (data.get("item_script") or {}).items()
            },
        )
