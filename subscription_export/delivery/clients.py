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

import abc
import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import requests
from requests.adapters import HTTPAdapter

from subscription_export.delivery.mapping import (
    ChangeRow,
    MappingError,
    crm_item,
    erp_request,
    journal_plan,
    subscription_id,
)
from subscription_export.delivery.retry import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    RetryPolicy,
    is_retryable,
    raise_for_delivery,
    send,
)

Status = Literal["delivered", "skipped", "dead_letter"]
Timeout = float | tuple[float, float]


def idempotency_key(destination: str, window_key: str, lsn: int) -> str:
    """The key of one logical operation: the same window and LSN always give the same key."""
    return f"{destination}:{window_key}:{lsn}"


def batch_idempotency_key(item_keys: Sequence[str]) -> str:
    """A batch request's key, derived from its items' keys (in order)."""
    digest = hashlib.sha256("\n".join(item_keys).encode()).hexdigest()
    return f"batch:{digest[:40]}"


@dataclass(frozen=True)
class DeliveryResult:
    lsn: int
    subscription_id: str
    status: Status
    attempts: int  # HTTP attempts that carried this row (0 when nothing was sent)
    error: str | None = None  # why it is a dead letter, or why it was skipped
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Unit:
    """One keyed operation on the wire: an ERP request, a CRM item or a journal entry."""

    key: str
    body: dict[str, Any]


@dataclass(frozen=True)
class OutboundItem:
    """A row ready to send, or already settled (mapping error, nothing to send)."""

    lsn: int
    subscription_id: str
    key: str
    units: tuple[Unit, ...] = ()
    error: str | None = None
    skip: str | None = None

    def settled(self) -> DeliveryResult | None:
        """The result of an item that needs no request, else None."""
        if self.error is not None:
            return self.result("dead_letter", 0, self.error)
        if self.skip is not None:
            return self.result("skipped", 0, self.skip)
        return None

    def result(self, status: Status, attempts: int, error: str | None = None) -> DeliveryResult:
        return DeliveryResult(self.lsn, self.subscription_id, status, attempts, error, self.key)


HELD_BACK = "held back: an earlier change of this subscription is an open dead letter"


def held_back(item: OutboundItem) -> DeliveryResult:
    """Not sent, to keep the record's order: a dead letter that waits behind the earlier one."""
    return item.result("dead_letter", 0, HELD_BACK)


@dataclass(frozen=True)
class RemoteChange:
    """One edit made by a user of a remote system, from its change feed."""

    cursor: int
    id: str
    op: Literal["upsert", "delete"]
    record: dict[str, Any]
    remote_version: int
    updated_at: dt.datetime  # UTC


@dataclass(frozen=True)
class ChangePage:
    changes: list[RemoteChange]
    next_cursor: int


class DeliveryClient(abc.ABC):
    """Base: session, timeouts, retries, preparation of rows into keyed units."""

    destination: ClassVar[str]
    keeps_record_order: ClassVar[bool] = True  # a later change of a record waits behind a failure

    def __init__(
        self,
        base_url: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: Timeout = (3.05, 10.0),
        pool_size: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    # -- preparation -------------------------------------------------------------------------

    def prepare(
        self,
        rows: Sequence[ChangeRow],
        *,
        window_key: str,
        prior_state: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[OutboundItem]:
        """Map rows (in LSN order) to keyed items; nothing is sent."""
        ordered = sorted(rows, key=lambda r: r["_lsn"])
        if len({row["_lsn"] for row in ordered}) != len(ordered):
            raise ValueError("change rows with duplicate LSNs: an LSN names exactly one change")
        mapped = self._map_rows(ordered, prior_state)
        items = []
        for row in ordered:
            lsn = row["_lsn"]
            key = idempotency_key(self.destination, window_key, lsn)
            ident = str(row.get("id"))
            if row.get("_origin") == self.destination:
                items.append(OutboundItem(lsn, ident, key, skip="echo of this system's change"))
                continue
            bodies = mapped[lsn]
            if isinstance(bodies, MappingError):
                items.append(OutboundItem(lsn, ident, key, error=f"unmappable row: {bodies}"))
            elif not bodies:
                items.append(OutboundItem(lsn, ident, key, skip="nothing to send"))
            else:
                units = tuple(self._unit(key, n, body) for n, body in enumerate(bodies))
                items.append(OutboundItem(lsn, ident, key, units))
        return items

    @abc.abstractmethod
    def _map_rows(
        self, rows: Sequence[ChangeRow], prior_state: Mapping[str, Mapping[str, Any]] | None
    ) -> dict[int, list[dict[str, Any]] | MappingError]:
        """Per LSN: the bodies to send (one per unit), or why the row cannot be mapped."""

    @staticmethod
    def _map_each(
        rows: Sequence[ChangeRow], mapper: Callable[[ChangeRow], dict[str, Any]]
    ) -> dict[int, list[dict[str, Any]] | MappingError]:
        """`_map_rows` for destinations where each row maps on its own to one body."""
        mapped: dict[int, list[dict[str, Any]] | MappingError] = {}
        for row in rows:
            try:
                subscription_id(row)
                mapped[row["_lsn"]] = [mapper(row)]
            except MappingError as exc:
                mapped[row["_lsn"]] = exc
        return mapped

    def _unit(self, key: str, n: int, body: dict[str, Any]) -> Unit:
        return Unit(key, body)

    # -- sending -----------------------------------------------------------------------------

    def send(
        self, items: Sequence[OutboundItem], *, held: Collection[str] = ()
    ) -> list[DeliveryResult]:
        """Deliver prepared items (retrying as the policy allows); one result per item. An item
        of a subscription in `held` (open dead letter) or after its failed item is held back:
        sent, it would make the failed change stale (409) and so never replayable."""
        blocked = set(held) if self.keeps_record_order else set()
        results: dict[int, DeliveryResult] = {}
        pending = []
        for item in items:
            settled = item.settled()
            if settled is not None:
                results[item.lsn] = settled
            elif item.subscription_id in blocked:
                results[item.lsn] = held_back(item)
            else:
                pending.append(item)
        for result in self._send_items(pending, blocked):
            results[result.lsn] = result
        return [results[item.lsn] for item in items]

    def send_rows(
        self,
        rows: Sequence[ChangeRow],
        *,
        window_key: str,
        prior_state: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[DeliveryResult]:
        """Prepare and send in one call, sequentially (see `delivery.deliver` for parallel)."""
        return self.send(self.prepare(rows, window_key=window_key, prior_state=prior_state))

    @abc.abstractmethod
    def _send_items(self, items: Sequence[OutboundItem], blocked: set[str]) -> list[DeliveryResult]:
        """Send items that need a request, one result per item; a failure blocks its record."""

    def _url(self, path: str) -> str:
        return self.base_url + path

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> DeliveryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
        payload = response.json()
        try:
            changes = [
                RemoteChange(
                    cursor=int(c["cursor"]),
                    id=str(c["id"]),
                    op=c["op"],
                    record=dict(c["record"]),
                    remote_version=int(c["remote_version"]),
                    updated_at=dt.datetime.fromisoformat(c["updated_at"]).astimezone(dt.UTC),
                )
                for c in payload["changes"]
            ]
            return ChangePage(changes, int(payload["next_cursor"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentDeliveryError(f"malformed change feed page: {exc!r}") from None


class ErpClient(ChangeFeedMixin, DeliveryClient):
    """One `PUT`/`DELETE /subscriptions/{id}` per row; a 404 on DELETE is already deleted."""

    destination = "erp"

    def _map_rows(
        self, rows: Sequence[ChangeRow], prior_state: Mapping[str, Mapping[str, Any]] | None
    ) -> dict[int, list[dict[str, Any]] | MappingError]:
        return self._map_each(rows, _erp_body)

    def _send_items(self, items: Sequence[OutboundItem], blocked: set[str]) -> list[DeliveryResult]:
        results = []
        for item in items:
            result = held_back(item) if item.subscription_id in blocked else self._send_one(item)
            if result.status == "dead_letter":
                blocked.add(item.subscription_id)
            results.append(result)
        return results

    def _send_one(self, item: OutboundItem) -> DeliveryResult:
        (unit,) = item.units
        method, url, body = unit.body["method"], self._url(unit.body["path"]), unit.body["body"]
        ok_statuses = frozenset({404}) if method == "DELETE" else frozenset()

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
            raise_for_delivery(response, ok_statuses=ok_statuses)

        try:
            _, attempts = self.retry.call(attempt)
        except DeliveryError as exc:
            return item.result("dead_letter", exc.attempts, str(exc))
        return item.result("delivered", attempts)


def _erp_body(row: ChangeRow) -> dict[str, Any]:
    request = erp_request(row)
    return {"method": request.method, "path": request.path, "body": request.body}


class _BatchClient(DeliveryClient):
    """Batch APIs answering one status per unit; only failed retryable units are resent.

    The server applies a batch's items independently, so if a subscription's earlier change
    failed while its later change succeeded, the retried earlier change would arrive after the
    later one (and be refused as stale). With `one_change_per_subscription`, items are sent in
    rounds - the first change of each subscription, then the second, ... - and a round is
    settled before the next starts, which keeps each subscription's changes in LSN order.
    """

    batch_path: ClassVar[str]
    batch_field: ClassVar[str]
    one_change_per_subscription: ClassVar[bool] = True

    def _send_items(self, items: Sequence[OutboundItem], blocked: set[str]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        for round_items in self._rounds(items):
            sent = [i for i in round_items if i.subscription_id not in blocked]
            results.extend(held_back(i) for i in round_items if i.subscription_id in blocked)
            for result in self._send_round(sent):
                if result.status == "dead_letter" and self.keeps_record_order:
                    blocked.add(result.subscription_id)
                results.append(result)
        return results

    def _rounds(self, items: Sequence[OutboundItem]) -> list[list[OutboundItem]]:
        if not self.one_change_per_subscription:
            return [list(items)] if items else []
        rounds: list[list[OutboundItem]] = []
        seen: Counter[str] = Counter()
        for item in items:
            position = seen[item.subscription_id]
            seen[item.subscription_id] += 1
            if position == len(rounds):
                rounds.append([])
            rounds[position].append(item)
        return rounds

    def _send_round(self, items: Sequence[OutboundItem]) -> list[DeliveryResult]:
        units = [unit for item in items for unit in item.units]
        outcome, attempts = self._send_units(units)
        results = []
        for item in items:
            errors = [outcome[u.key] for u in item.units if outcome[u.key] is not None]
            tries = max(attempts[u.key] for u in item.units)
            if errors:
                results.append(item.result("dead_letter", tries, "; ".join(map(str, errors))))
            else:
                results.append(item.result("delivered", tries))
        return results

    def _send_units(self, units: Sequence[Unit]) -> tuple[dict[str, str | None], dict[str, int]]:
        """Per unit key: None if applied, else the error; and the attempts each unit took."""
        outcome: dict[str, str | None] = {}
        attempts = {u.key: 0 for u in units}
        item_errors: dict[str, str] = {}
        pending = list(units)
        try:
            for attempt in self.retry.retrying():
                with attempt:
                    item_errors.clear()
                    for unit in pending:
                        attempts[unit.key] += 1
                    pending = self._post(pending, outcome, item_errors)
                    if pending:
                        first = item_errors[pending[0].key]
                        raise RetryableDeliveryError(f"{len(pending)} item(s) failed, e.g. {first}")
        except DeliveryError as exc:
            for unit in pending:
                outcome[unit.key] = item_errors.get(unit.key) or str(exc)
        return outcome, attempts

    def _post(
        self, units: list[Unit], outcome: dict[str, str | None], item_errors: dict[str, str]
    ) -> list[Unit]:
        """One batch request; records settled units in `outcome`, returns those to retry."""
        url = self._url(self.batch_path)
        body = {self.batch_field: [unit.body for unit in units]}
        headers = {"Idempotency-Key": batch_idempotency_key([u.key for u in units])}
        response = send(
            lambda: self.session.post(url, json=body, headers=headers, timeout=self.timeout)
        )
        raise_for_delivery(response)
        answers = _batch_answers(response, units)
        retry = []
        for unit, answer in zip(units, answers, strict=True):
            if answer.get("status") == "ok":
                outcome[unit.key] = None
                continue
            code = answer.get("code")
            status = code if isinstance(code, int) else 0
            message = f"item HTTP {status} {answer.get('error')}: {answer.get('detail', '')}"
            if is_retryable(status, answer.get("error")):
                item_errors[unit.key] = message
                retry.append(unit)
            else:
                outcome[unit.key] = message
        return retry


def _batch_answers(response: requests.Response, units: Sequence[Unit]) -> list[dict[str, Any]]:
    """The per-unit answers, checked to line up with what was sent."""
    try:
        answers = response.json()["results"]
    except (ValueError, KeyError, TypeError):
        raise PermanentDeliveryError(f"malformed batch answer: {response.text[:200]}") from None
    if not isinstance(answers, list) or len(answers) != len(units):
        raise PermanentDeliveryError(
            f"batch answer has {len(answers) if isinstance(answers, list) else '?'} results "
            f"for {len(units)} items"
        )
    for unit, answer in zip(units, answers, strict=True):
        if not isinstance(answer, dict) or answer.get("idempotency_key") not in (None, unit.key):
            raise PermanentDeliveryError(f"batch answer out of order at item {unit.key}")
    return answers


class CrmClient(ChangeFeedMixin, _BatchClient):
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


class AccountingClient(_BatchClient):
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
