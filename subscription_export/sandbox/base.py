"""The request pipeline shared by the mock ERP, CRM and accounting systems.

A system is plain Python (`handle(Request) -> Response`), so its behaviour does not depend on
the HTTP plumbing in `server.py`. Every request runs through the same steps, in the order a
real API gateway would apply them: route, inject the planned fault, claim the idempotency key,
add latency (while the key is in flight), apply, store the answer under the key, answer.
Batch APIs apply their items one by one, each under its own idempotency key.
"""

from __future__ import annotations

import abc
import copy
import datetime as dt
import json
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from subscription_export.sandbox.faults import Fault, FaultPlan
from subscription_export.sandbox.idempotency import IdempotencyStore, fingerprint
from subscription_export.sandbox.messages import (
    DROP,
    ApiError,
    Request,
    Response,
    seconds_header,
    utc_now,
)
from subscription_export.sandbox.routes import Route, match_route

MAX_BATCH_ITEMS = 1000
ItemApply = Callable[[dict[str, Any]], dict[str, Any]]
IN_FLIGHT = "request_in_progress"  # 409 error code: the idempotency key is being processed


class SandboxSystem(abc.ABC):
    """Base of the three mock systems: routing, faults, idempotency, counters."""

    name: ClassVar[str] = "system"

    def __init__(
        self,
        faults: FaultPlan | None = None,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        in_flight_retry_after_s: float = 1.0,
    ) -> None:
        self._faults = faults or FaultPlan()
        self._clock = clock
        self._in_flight_retry_after_s = in_flight_retry_after_s
        self._lock = threading.RLock()  # guards all system state below
        self._stopping = threading.Event()
        self._request_keys = IdempotencyStore()
        self._item_keys = IdempotencyStore()
        self._applications: Counter[str] = Counter()
        self._status_counts: Counter[str] = Counter()
        self._item_status_counts: Counter[str] = Counter()
        self._fault_counts: Counter[str] = Counter()
        self._routes: tuple[Route, ...] = self._build_routes()

    # -- to be provided by each system -------------------------------------------------------

    @abc.abstractmethod
    def _build_routes(self) -> tuple[Route, ...]:
        """The system's API: method, path pattern, fault endpoint name, handler."""

    @abc.abstractmethod
    def _system_state(self) -> dict[str, Any]:
        """System-specific state for `state()`; called with the state lock held."""

    # -- faults and lifecycle ----------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan:
        return self._faults

    def set_faults(self, plan: FaultPlan) -> None:
        """Replace the fault plan at runtime (tests switch faults on and off mid-run)."""
        self._faults = plan

    def stop(self) -> None:
        """Wake requests held by latency or timeout faults so the server can shut down."""
        self._stopping.set()

    def _pause(self, seconds: float) -> bool:
        """Sleep unless stopping; False if the system is shutting down."""
        if seconds <= 0:
            return not self._stopping.is_set()
        return not self._stopping.wait(seconds)

    # -- inspection --------------------------------------------------------------------------

    @property
    def applications(self) -> dict[str, int]:
        """How many times the operation named by each idempotency key was applied (must be 1)."""
        with self._lock:
            return dict(self._applications)

    @property
    def requests_by_status(self) -> dict[str, int]:
        """Answered requests by status code; `reset`/`lost_response` for dropped connections."""
        with self._lock:
            return dict(self._status_counts)

    @property
    def items_by_status(self) -> dict[str, int]:
        """Answered batch items by status code (an item's own code, not its request's)."""
        with self._lock:
            return dict(self._item_status_counts)

    @property
    def faults_injected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._fault_counts)

    def state(self) -> dict[str, Any]:
        """Everything a test may assert on, JSON-ready (also served at GET /_sandbox/state)."""
        with self._lock:
            return {
                "system": self.name,
                "applications": dict(self._applications),
                "requests_by_status": dict(self._status_counts),
                "items_by_status": dict(self._item_status_counts),
                "faults_injected": dict(self._fault_counts),
                "faults": self._faults.to_json(),
                **copy.deepcopy(self._system_state()),
            }

    # -- the request pipeline ----------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Route, inject the planned fault, claim the key, pause, apply, store, answer."""
        if request.path.startswith("/_sandbox/"):
            try:
                return self._admin(request)
            except ApiError as exc:
                return Response.json(exc.status, exc.payload())
        route, params = match_route(self._routes, request)
        if route is None:
            return self._count(Response.json(405 if params else 404, {"error": "no_route"}))

        fault = self._faults.decide(route.endpoint)
        if fault.kind != "none":
            with self._lock:
                self._fault_counts[fault.kind] += 1
        refused = self._refusal(fault)
        if refused is not None:
            return self._count(refused, "reset" if refused.drop else None)

        try:
            body = json.loads(request.body) if request.body.strip() else None
        except ValueError:
            return self._count(Response.json(400, {"error": "invalid_json"}))
        key = request.headers.get("idempotency-key") if route.mutating else None
        if key:
            earlier = self._claim(key, request, body)
            if earlier is not None:
                return self._count(earlier)

        answer = self._apply(route, request, params, body, key, fault.latency_s + fault.hold_s)
        if answer.drop:  # shutting down
            return self._count(answer, "reset")
        if fault.kind == "lost_response":
            return self._count(DROP, "lost_response")
        return self._count(answer)

    def _refusal(self, fault: Fault) -> Response | None:
        """The answer of a fault that refuses the request before anything is applied."""
        if fault.kind == "rate_limit":
            retry_after = (("Retry-After", seconds_header(fault.retry_after_s or 0.0)),)
            return Response.json(429, {"error": "rate_limited"}, retry_after)
        if fault.kind == "error":
            return Response.json(fault.status or 500, {"error": "injected_failure"})
        if fault.kind == "reset":
            return DROP
        return None

    def _claim(self, key: str, request: Request, body: Any) -> Response | None:
        """Claim an idempotency key; an answer if the request must not be processed now."""
        query = sorted(request.query.items())
        claim = self._request_keys.begin(
            key, fingerprint(request.method, request.path, query, body)
        )
        if claim.outcome == "replay":
            stored: Response = claim.stored
            replayed = (*stored.headers, ("Idempotent-Replayed", "true"))
            return Response(stored.status, stored.body, replayed)
        if claim.outcome == "mismatch":
            detail = "this Idempotency-Key was used with a different request"
            return Response.json(422, {"error": "idempotency_key_reused", "detail": detail})
        if claim.outcome == "in_flight":
            retry_after = (("Retry-After", seconds_header(self._in_flight_retry_after_s)),)
            return Response.json(409, {"error": IN_FLIGHT, "detail": "retry later"}, retry_after)
        return None

    def _apply(
        self,
        route: Route,
        request: Request,
        params: dict[str, str],
        body: Any,
        key: str | None,
        pause_s: float,
    ) -> Response:
        """Run the handler (after the fault's latency, holding the key) and settle the key."""
        if not self._pause(pause_s):
            if key:
                self._request_keys.abandon(key)
            return DROP
        try:
            answer = route.handler(request, params, body, key)
        except ApiError as exc:
            answer = Response.json(exc.status, exc.payload())
        except Exception:
            if key:
                self._request_keys.abandon(key)
            raise
        if key and answer.final:
            self._request_keys.complete(key, answer)
        elif key:
            # A batch answer with retryable item failures is not the operation's final result:
            # release the key so the same batch can be retried (applied items replay by item key).
            self._request_keys.abandon(key)
        return answer

    def _count(self, response: Response, label: str | None = None) -> Response:
        with self._lock:
            self._status_counts[label or str(response.status)] += 1
        return response

    def _applied(self, key: str | None) -> None:
        """Record one application of a keyed operation; callers hold `self._lock`."""
        if key:
            self._applications[key] += 1

    # -- batch items -------------------------------------------------------------------------

    def _batch_route(self, path: str, field: str, ident_field: str, apply: ItemApply) -> Route:
        """`POST {path}` of items listed under `field`, each applied on its own by `apply`
        (with the state lock held) and answered with a status per item."""
        endpoint = f"POST {path}"

        def handler(
            request: Request, params: dict[str, str], body: Any, key: str | None
        ) -> Response:
            items = body.get(field) if isinstance(body, dict) else None
            return self._batch_answer(self._process_items(items, endpoint, ident_field, apply))

        return Route("POST", re.compile(re.escape(path)), endpoint, handler, mutating=True)

    def _process_items(
        self,
        items: Any,
        endpoint: str,
        ident_field: str,
        apply: ItemApply,
    ) -> list[dict[str, Any]]:
        """Apply batch items one by one, each exactly once per item idempotency key.

        Final answers (ok, 409, 422) are stored under the item key and replayed; an injected
        item failure (500) is not stored, so the retried item is applied then.
        """
        if not isinstance(items, list):
            raise ApiError(400, "invalid_batch", "expected a JSON list of items")
        if len(items) > MAX_BATCH_ITEMS:
            raise ApiError(422, "batch_too_large", f"at most {MAX_BATCH_ITEMS} items per batch")
        results = [self._process_item(item, endpoint, ident_field, apply) for item in items]
        with self._lock:
            self._item_status_counts.update(str(r["code"]) for r in results)
        return results

    @staticmethod
    def _batch_answer(results: list[dict[str, Any]]) -> Response:
        """200 with per-item results; not final while some item failed with a retryable code."""
        retryable = any(
            r["status"] != "ok"
            and (r["code"] == 429 or r["code"] >= 500 or r["error"] == IN_FLIGHT)
            for r in results
        )
        answer = Response.json(200, {"results": results})
        return Response(answer.status, answer.body, answer.headers, final=not retryable)

    def _process_item(
        self,
        item: Any,
        endpoint: str,
        ident_field: str,
        apply: ItemApply,
    ) -> dict[str, Any]:
        if not isinstance(item, dict):
            return _item_error(
                None, None, ident_field, ApiError(422, "invalid_item", "not an object")
            )
        key = item.get("idempotency_key")
        ident = item.get(ident_field)
        with self._lock:
            if key is not None:
                refused = self._claim_item(str(key), item, ident, ident_field)
                if refused is not None:
                    return refused
            fault = self._item_fault(endpoint, item, ident)
            if fault is not None and not fault.applied:
                self._fault_counts[fault.label] += 1
                if key is not None:
                    self._item_keys.abandon(str(key))
                return _item_error(ident, key, ident_field, fault.error())
            result = self._apply_claimed(item, key, ident, ident_field, apply)
            if fault is not None and result["status"] == "ok":  # applied, answer "lost"
                self._fault_counts[fault.label] += 1
                return _item_error(ident, key, ident_field, fault.error())
            return dict(result)

    def _claim_item(
        self, key: str, item: dict[str, Any], ident: Any, ident_field: str
    ) -> dict[str, Any] | None:
        """Claim an item key; the answer to give instead of applying, if any."""
        claim = self._item_keys.begin(key, fingerprint(item))
        if claim.outcome == "replay":
            return dict(claim.stored)
        if claim.outcome == "mismatch":
            err = ApiError(422, "idempotency_key_reused", "item key reused with new content")
            return _item_error(ident, key, ident_field, err)
        if claim.outcome == "in_flight":
            err = ApiError(409, IN_FLIGHT, "item is being applied")
            return _item_error(ident, key, ident_field, err)
        return None

    def _apply_claimed(
        self, item: dict[str, Any], key: Any, ident: Any, ident_field: str, apply: ItemApply
    ) -> dict[str, Any]:
        """Apply one claimed item and store its final answer under its key."""
        try:
            result = {ident_field: ident, "idempotency_key": key, **apply(item)}
            result.setdefault("status", "ok")
            result.setdefault("code", 200)
        except ApiError as exc:
            result = _item_error(ident, key, ident_field, exc)
        except Exception:
            if key is not None:
                self._item_keys.abandon(str(key))
            raise
        if key is not None:
            self._item_keys.complete(str(key), result)
            if result["status"] == "ok":
                self._applied(str(key))
        return result

    def _item_fault(self, endpoint: str, item: dict[str, Any], ident: Any) -> ItemFault | None:
        """The fault one batch item meets: its scripted status, else a drawn item failure."""
        scripted = self._faults.scripted_item(ident)
        if scripted is not None:
            return ItemFault(scripted, "scripted_item", "scripted item failure")
        if self._faults.item_fails(endpoint):
            return ItemFault(500, "item_failure", "item failed, retry it")
        return None

    # -- admin -------------------------------------------------------------------------------

    def _admin(self, request: Request) -> Response:
        try:
            body = json.loads(request.body) if request.body.strip() else {}
        except ValueError:
            raise ApiError(400, "invalid_json", "the body is not JSON") from None
        if (request.method, request.path) == ("GET", "/_sandbox/state"):
            return Response.json(200, self.state())
        if (request.method, request.path) == ("GET", "/_sandbox/faults"):
            return Response.json(200, self._faults.to_json())
        if (request.method, request.path) == ("POST", "/_sandbox/faults"):
            try:
                plan = FaultPlan.from_json(body)
            except (TypeError, ValueError) as exc:
                raise ApiError(422, "invalid_faults", str(exc)) from None
            self.set_faults(plan)
            return Response.json(200, plan.to_json())
        return self._extra_admin(request, body)

    def _extra_admin(self, request: Request, body: Any) -> Response:
        raise ApiError(404, "no_route", f"{request.method} {request.path}")


@dataclass(frozen=True)
class ItemFault:
    """What an injected fault does to one batch item: refused with `status` before anything is
    applied, or (`applied`) applied and then answered with `status` - a lost answer."""

    status: int
    label: str  # counted in `faults_injected`
    detail: str
    applied: bool = False

    def error(self) -> ApiError:
        code = "injected_failure" if self.status >= 500 else "injected_refusal"
        return ApiError(self.status, code, self.detail)


def _item_error(ident: Any, key: Any, ident_field: str, exc: ApiError) -> dict[str, Any]:
    return {
        ident_field: ident,
        "idempotency_key": key,
        "status": "error",
        "code": exc.status,
        "error": exc.error,
        "detail": exc.detail,
    }
