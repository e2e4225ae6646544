"""The three mock destinations, each with the API shape its real counterpart would have.

* ERP - one resource per subscription: `PUT /subscriptions/{id}` upserts the record,
  `DELETE /subscriptions/{id}` (version in the JSON body or `?version=`) removes it. A write
  older than the stored version (or than the version a deleted record had) is refused with
  409 `stale_version`; equal versions are accepted. Deleting an unknown record is 404
  `not_found` (the delivery client counts that as already deleted).
  `POST /subscriptions/$batch` (as SAP OData `$batch`, NetSuite or Salesforce Composite offer)
  takes `{"items": [...]}`, at most 1000 items, each one sub-request `{"method": "PUT"|"DELETE",
  "id", "body": record | {"version"}, "idempotency_key"}` with the single endpoint's semantics:
  the body's `version` is the expected version (older than the stored one: 409
  `stale_version`), an unknown id on DELETE is 404 `not_found`, an item key replays its stored
  answer. The answer is 200 with one result per item, in order: `{"id", "idempotency_key",
  "status": "ok"|"error", "code", "version", "remote_version"}` or `"error", "detail"`; one bad
  item never fails the others. Items are applied in list order. Each item also draws the faults
  planned for its single endpoint (`PUT /subscriptions`, `DELETE /subscriptions`): `error`,
  `rate_limit`, `reset` refuse the item (its status, 429, 503) with nothing applied;
  `lost_response` and `timeout` apply it and answer 500/504 (the retry replays ok).
* CRM - `POST /batch` of `{"op": "upsert"|"delete", "id", "record"|"version",
  "idempotency_key"}` items, answered 200 with one status per item. Deleting an unknown
  record is `ok` (with `"absent": true`): the CRM is idempotent about deletes.
* Accounting - `POST /journal/batch` of journal entries, answered per entry. It is a ledger:
  entries are only appended, an `entry_id` posted before under another key is 409
  `duplicate_entry` (double booking is the one error a ledger must refuse), and it has no
  change feed because its users do not edit subscriptions.

ERP and CRM serve `GET /changes?after=&limit=` with the edits made by their own users.
"""

from __future__ import annotations

import re
from typing import Any

from subscription_export.sandbox.base import ItemFault, SandboxSystem
from subscription_export.sandbox.messages import ApiError, Request, Response, iso_z
from subscription_export.sandbox.records import RecordSystem
from subscription_export.sandbox.routes import Route
from subscription_export.sandbox.validation import (
    require_choice,
    require_currency,
    require_date,
    require_decimal,
    require_str,
    require_subscription,
    require_version,
)

JOURNAL_KINDS = ("revenue", "refund", "credit", "opening")  # opening: a snapshot row
_CHANGES = re.compile(r"/changes")
BATCH_PATH = "/subscriptions/$batch"


class ErpSystem(RecordSystem):
    name = "erp"

    def _build_routes(self) -> tuple[Route, ...]:
        item = re.compile(r"/subscriptions/(?P<id>[^/]+)")
        return (
            self._batch_route(BATCH_PATH, "items", "id", self._sub_request),
            Route("PUT", item, "PUT /subscriptions", self._put, mutating=True),
            Route("DELETE", item, "DELETE /subscriptions", self._delete, mutating=True),
            Route("GET", _CHANGES, "GET /changes", self._changes_route, mutating=False),
        )

    @staticmethod
    def validate(ident: str, record: Any) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise ApiError(422, "invalid_record", "the body must be a JSON object")
        if record.get("id") != ident:
            raise ApiError(422, "invalid_record", f"body id {record.get('id')!r} != path {ident!r}")
        require_subscription(record, customer="user_id", plan="name", price="amount")
        return record

    def _put(
        self, request: Request, params: dict[str, str], body: Any, key: str | None
    ) -> Response:
        return Response.json(*self._upsert(params["id"], body, key))

    def _upsert(self, ident: str, body: Any, key: str | None) -> tuple[int, dict[str, Any]]:
        """Store one record: its status (201 created, 200 replaced) and answer."""
        record = self.validate(ident, body)
        with self._lock:
            self._check_version(ident, record["version"])
            created = ident not in self._records
            self._store(ident, record)
            remote_version = self._bump(ident)
            self._applied(key)
        answer = {"id": ident, "version": record["version"], "remote_version": remote_version}
        return 201 if created else 200, answer

    def _sub_request(self, item: dict[str, Any]) -> dict[str, Any]:
        """One `$batch` sub-request with the single endpoint's semantics (lock held); called
        directly, not through a `Response` and back, which cost a JSON round trip per item."""
        method = require_choice(item, "method", ("PUT", "DELETE"))
        ident = require_str(item, "id")
        if method == "PUT":
            status, answer = self._upsert(ident, item.get("body"), None)
        else:
            body = item.get("body")
            given = body.get("version") if isinstance(body, dict) else None
            status, answer = self._remove_record(ident, given, None)
        return {"code": status, **answer}

    def _item_fault(self, endpoint: str, item: dict[str, Any], ident: Any) -> ItemFault | None:
        """Scripted and item faults, then the request faults of the item's single endpoint."""
        fault = super()._item_fault(endpoint, item, ident)
        if fault is not None or item.get("method") not in ("PUT", "DELETE"):
            return fault
        drawn = self._faults.decide(f"{item['method']} /subscriptions")
        if drawn.kind == "none":
            return None
        if drawn.kind in ("lost_response", "timeout"):
            status = 500 if drawn.kind == "lost_response" else 504
            return ItemFault(status, drawn.kind, "answer lost", applied=True)
        status = {"rate_limit": 429, "reset": 503}.get(drawn.kind, drawn.status or 500)
        return ItemFault(status, drawn.kind, f"injected {drawn.kind}")

    def _delete(
        self, request: Request, params: dict[str, str], body: Any, key: str | None
    ) -> Response:
        given = body if isinstance(body, dict) else {}
        version = given.get("version", request.query.get("version"))
        return Response.json(*self._remove_record(params["id"], version, key))

    def _remove_record(
        self, ident: str, version: Any, key: str | None
    ) -> tuple[int, dict[str, Any]]:
        """Delete one record (`version`: the expected one, if given): status and answer."""
        if isinstance(version, str) and version.isdigit():
            version = int(version)
        if version is not None:
            version = require_version({"version": version})
        with self._lock:
            if ident not in self._records:
                raise ApiError(404, "not_found", f"no subscription {ident!r}")
            if version is not None:
                self._check_version(ident, version)
            self._remove(ident)
            remote_version = self._bump(ident)
            self._applied(key)
        return 200, {"id": ident, "deleted": True, "remote_version": remote_version}


class CrmSystem(RecordSystem):
    name = "crm"

    def _build_routes(self) -> tuple[Route, ...]:
        return (
            self._batch_route("/batch", "items", "id", self._apply_item),
            Route("GET", _CHANGES, "GET /changes", self._changes_route, mutating=False),
        )

    @staticmethod
    def validate(record: Any) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise ApiError(422, "invalid_record", "record must be an object")
        require_subscription(record, customer="customer_id", plan="plan_name", price="price")
        return record

    def _apply_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """Apply one item; the caller holds the state lock."""
        ident = require_str(item, "id")
        op = require_choice(item, "op", ("upsert", "delete"))
        if op == "upsert":
            record = self.validate(item.get("record"))
            self._check_version(ident, record["version"])
            self._store(ident, record)
            return {"remote_version": self._bump(ident)}
        version = item.get("version")
        if ident not in self._records:
            return {"absent": True}
        if version is not None:
            self._check_version(ident, require_version(item))
        self._remove(ident)
        return {"remote_version": self._bump(ident)}


class AccountingSystem(SandboxSystem):
    name = "accounting"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._journal: list[dict[str, Any]] = []
        self._entry_ids: set[str] = set()
        super().__init__(*args, **kwargs)

    @property
    def journal(self) -> list[dict[str, Any]]:
        """Posted entries in posting order, each with the `posted_at` the ledger stamped."""
        with self._lock:
            return [dict(entry) for entry in self._journal]

    def _system_state(self) -> dict[str, Any]:
        return {"journal": self._journal}

    def _build_routes(self) -> tuple[Route, ...]:
        return (self._batch_route("/journal/batch", "entries", "entry_id", self._post),)

    @staticmethod
    def validate(entry: dict[str, Any]) -> dict[str, Any]:
        require_str(entry, "entry_id")
        require_str(entry, "subscription_id")
        require_choice(entry, "kind", JOURNAL_KINDS)
        require_decimal(entry, "amount", positive=True)
        require_currency(entry)
        require_date(entry, "billing_date")
        lsn = entry.get("lsn")
        if isinstance(lsn, bool) or not isinstance(lsn, int):
            raise ApiError(422, "invalid_field", "lsn must be an integer")
        return entry

    def _post(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Append one entry; the caller holds the state lock."""
        self.validate(entry)
        if entry["entry_id"] in self._entry_ids:
            raise ApiError(409, "duplicate_entry", f"entry {entry['entry_id']} already posted")
        posted = {k: v for k, v in entry.items() if k != "idempotency_key"}
        posted["posted_at"] = iso_z(self._clock())
        self._journal.append(posted)
        self._entry_ids.add(entry["entry_id"])
        return {}


SYSTEMS: dict[str, type[SandboxSystem]] = {
    "erp": ErpSystem,
    "crm": CrmSystem,
    "accounting": AccountingSystem,
}


def make_system(name: str, **kwargs: Any) -> SandboxSystem:
    """Build a system by name (`erp`, `crm`, `accounting`); kwargs go to its constructor."""
    try:
        cls = SYSTEMS[name]
    except KeyError:
        raise ValueError(
            f"unknown sandbox system {name!r}; choose one of {sorted(SYSTEMS)}"
        ) from None
    return cls(**kwargs)
