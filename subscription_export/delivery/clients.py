"""HTTP delivery clients for the ERP, CRM and accounting systems.

Each client turns change rows into its system's requests (`prepare`) and sends them with
retries (`send`), answering one `DeliveryResult` per row. Every logical operation carries an
idempotency key derived from `(destination, window key, LSN)`, so re-sending a window after a
crash, or retrying after a lost answer, is applied once. Batch requests get a key derived from
their items' keys, and every item carries its own key: a retry of only the failed items of a
batch is a new, still deterministic batch, and the server dedupes the items themselves.

Rows whose `_origin` is the destination itself are not sent (status `skipped`): they are
write-backs of changes that system made, and echoing them would loop. Rows that book nothing
in accounting are `skipped` too. Rows that cannot be mapped are dead letters without a request.

One `requests.Session` per client pools connections; clients are safe to share between the
delivery threads (the session is only used to send, and urllib3's pool is thread-safe).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import unquote

import requests

from subscription_export.delivery.batching import BatchClient, batch_answers
from subscription_export.delivery.client_base import (
    HELD_BACK,
    ChangePage,
    DeliveryClient,
    DeliveryResult,
    OutboundItem,
    RemoteChange,
    Status,
    Timeout,
    Unit,
    batch_idempotency_key,
    held_back,
    idempotency_key,
)
from subscription_export.delivery.mapping import (
    ChangeRow,
    MappingError,
    crm_item,
    erp_request,
    journal_plan,
)
from subscription_export.delivery.retry import (
    DeliveryError,
    PermanentDeliveryError,
    RetryPolicy,
    error_code,
    raise_for_delivery,
    send,
)

_BatchClient = BatchClient  # the name other modules knew
__all__ = [
    "HELD_BACK",
    "AccountingClient",
    "BatchClient",
    "ChangeFeedMixin",
    "ChangePage",
    "CrmClient",
    "DeliveryClient",
    "DeliveryResult",
    "ErpClient",
    "OutboundItem",
    "RemoteChange",
    "Status",
    "Timeout",
    "Unit",
    "batch_answers",
    "batch_idempotency_key",
    "held_back",
    "idempotency_key",
]


class ChangeFeedMixin:
    """Reads `GET /changes` of a system whose users edit subscriptions (ERP, CRM)."""

    base_url: str
    session: requests.Session
    retry: RetryPolicy
    timeout: Timeout

    def fetch_changes(self, after: int = 0, limit: int = 100) -> ChangePage:
        """Changes made after cursor `after`, oldest first; resume from `next_cursor`."""

        def attempt() -> requests.Response:
            url = self.base_url + "/changes"
            params = {"after": after, "limit": limit}
            response = send(lambda: self.session.get(url, params=params, timeout=self.timeout))
            raise_for_delivery(response)
            return response

        response, _ = self.retry.call(attempt)
        try:
            payload = response.json()  # a 2xx whose body is no JSON is a malformed page too
            changes = [
                RemoteChange(
                    cursor=int(c["cursor"]),
                    id=str(c["id"]),
                    op=_feed_op(c["op"]),
                    record=dict(c["record"]),
                    remote_version=int(c["remote_version"]),
                    updated_at=dt.datetime.fromisoformat(c["updated_at"]).astimezone(dt.UTC),
                )
                for c in payload["changes"]
            ]
            return ChangePage(changes, int(payload["next_cursor"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentDeliveryError(f"malformed change feed page: {exc!r}") from None


def _feed_op(op: object) -> Literal["upsert", "delete"]:
    """The feed's op, or ValueError: read as an upsert, an unknown op (`deleted`, `remove`),
    which carries the record's last state, would write that state back instead of deleting."""
    if op == "upsert":
        return "upsert"
    if op == "delete":
        return "delete"
    raise ValueError(f"op {op!r} is neither 'upsert' nor 'delete'")


class ErpClient(ChangeFeedMixin, BatchClient):
    """`POST /subscriptions/$batch` of PUT/DELETE sub-requests, answered per item (`batch`,
    the default); with `batch=False`, for an ERP without a batch endpoint, one `PUT`/`DELETE
    /subscriptions/{id}` per row. Either way a 404 on DELETE is already deleted, and a unit's
    body stays the single request (`method`, `path`, `body`), which dead letters store."""

    destination = "erp"
    batch_path = "/subscriptions/$batch"
    batch_field = "items"

    def __init__(self, base_url: str, *, batch: bool = True, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self.batch = batch

    def _map_rows(
        self, rows: Sequence[ChangeRow], prior_state: Mapping[str, Mapping[str, Any]] | None
    ) -> dict[int, list[dict[str, Any]] | MappingError]:
        return self._map_each(rows, _erp_body)

    def _send_items(self, items: Sequence[OutboundItem], blocked: set[str]) -> list[DeliveryResult]:
        if self.batch:
            return super()._send_items(items, blocked)
        results = []
        for item in items:
            result = held_back(item) if item.subscription_id in blocked else self._send_one(item)
            if result.status == "dead_letter":
                blocked.add(item.subscription_id)
            results.append(result)
        return results

    def _wire(self, unit: Unit) -> dict[str, Any]:
        body = unit.body
        ident = unquote(body["path"].rsplit("/", 1)[-1])
        return {
            "method": body["method"],
            "id": ident,
            "body": body["body"],
            "idempotency_key": unit.key,
        }

    def _item_ok(self, unit: Unit, answer: dict[str, Any]) -> bool:
        gone = (answer.get("code"), answer.get("error")) == (404, NOT_FOUND)
        return (gone and unit.body["method"] == "DELETE") or super()._item_ok(unit, answer)

    def _send_one(self, item: OutboundItem) -> DeliveryResult:
        (unit,) = item.units
        method, url, body = unit.body["method"], self._url(unit.body["path"]), unit.body["body"]

        def attempt() -> None:
            response = send(
                lambda: self.session.request(
                    method,
                    url,
                    json=body,
                    headers={"Idempotency-Key": unit.key},
                    timeout=self.timeout,
                )
            )
            if method == "DELETE" and _already_deleted(response):
                return
            raise_for_delivery(response)

        try:
            _, attempts = self.retry.call(attempt)
        except DeliveryError as exc:
            return item.result("dead_letter", exc.attempts, str(exc))
        return item.result("delivered", attempts)


NOT_FOUND = "not_found"  # the ERP's error code for a record it does not have


def _already_deleted(response: requests.Response) -> bool:
    """A DELETE answered 404 `not_found`: the record is gone already. Any other 404 (a
    `base_url` with a wrong path answers every request 404) is no deletion, and counting it
    as one would report each DELETE delivered while the ERP still holds the record."""
    return response.status_code == 404 and error_code(response) == NOT_FOUND


def _erp_body(row: ChangeRow) -> dict[str, Any]:
    request = erp_request(row)
    return {"method": request.method, "path": request.path, "body": request.body}


class CrmClient(ChangeFeedMixin, BatchClient):
    """`POST /batch` of upsert/delete items with per-item status."""

    destination = "crm"
    batch_path = "/batch"
    batch_field = "items"

    def _map_rows(
        self, rows: Sequence[ChangeRow], prior_state: Mapping[str, Mapping[str, Any]] | None
    ) -> dict[int, list[dict[str, Any]] | MappingError]:
        return self._map_each(rows, crm_item)

    def _unit(self, key: str, n: int, body: dict[str, Any]) -> Unit:
        return Unit(key, {**body, "idempotency_key": key})


class AccountingClient(BatchClient):
    """`POST /journal/batch` of the journal entries each change books (see `mapping`).

    Pass `prior_state` (each subscription's image before the window, from the change log) to
    `prepare`/`send_rows`/`deliver`: updates are booked as differences against it. Entries are
    independent postings, so a batch may hold several changes of one subscription.
    """

    destination = "accounting"
    keeps_record_order = False  # a ledger: entries are independent postings
    batch_path = "/journal/batch"
    batch_field = "entries"
    one_change_per_subscription = False

    def _map_rows(
        self, rows: Sequence[ChangeRow], prior_state: Mapping[str, Mapping[str, Any]] | None
    ) -> dict[int, list[dict[str, Any]] | MappingError]:
        return journal_plan(rows, prior_state)

    def _unit(self, key: str, n: int, body: dict[str, Any]) -> Unit:
        entry_key = f"{key}.{n}"
        return Unit(entry_key, {**body, "idempotency_key": entry_key})
