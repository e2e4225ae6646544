"""What every delivery client shares: idempotency keys, units and results, the base class.

`clients.py` holds the three systems' clients and re-exports these names; see its docstring
for how rows become keyed requests.
"""

from __future__ import annotations

import abc
import datetime as dt
import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import requests
from requests.adapters import HTTPAdapter

from subscription_export.delivery.mapping import (
    ChangeRow,
    MappingError,
    subscription_id,
)
from subscription_export.delivery.retry import (
    RetryPolicy,
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


def _session_with_environment(base_url: str) -> requests.Session:
    """A session with the environment's proxies, CA bundle and netrc credentials for
    `base_url`, read once here: requests would re-read them (os.environ, ~/.netrc) on every
    request, which cost more client time per batch than building its JSON body."""
    session = requests.Session()
    settings = session.merge_environment_settings(base_url, {}, None, None, None)
    netrc = requests.utils.get_netrc_auth(base_url)
    session.trust_env = False
    session.max_redirects = 0  # a redirect is refused, never followed (`retry.redirect_refused`)
    session.proxies.update(settings["proxies"])
    session.verify = settings["verify"]
    if netrc:
        session.auth = netrc
    return session


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
        self.session = _session_with_environment(self.base_url)
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
