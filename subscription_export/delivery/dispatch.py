"""Deliver a window's change rows to one destination with bounded concurrency.

Rows are split into lanes by subscription id, and each lane sends its rows in LSN order,
`batch_size` at a time, on its own worker thread (at most `max_concurrency` lanes). Changes to
one subscription therefore always arrive in order - the ERP and CRM refuse a version older than
the one they hold, so reordering them would turn good changes into dead letters - while
different subscriptions are delivered in parallel over the client's pooled connections.

Each lane maps its own rows, `batch_size` at a time, just before sending them: mapping is most
of the client's work, and done lane by lane it overlaps the requests other lanes have in
flight, instead of the whole window being mapped before the first request goes out. A lane
carries each subscription's last image from one mapped batch to the next (accounting books an
update against it), as one mapping of all the rows would.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from subscription_export.core.stopping import raise_if_stopped
from subscription_export.delivery.clients import DeliveryClient, DeliveryResult, OutboundItem
from subscription_export.delivery.mapping import ChangeRow, is_delete

T = TypeVar("T")


@dataclass(frozen=True)
class DeliveryStats:
    rows: int
    delivered: int
    skipped: int
    dead_lettered: int
    retried_attempts: int  # attempts beyond the first, summed over rows
    batches: int  # batches sent (each may take several attempts)
    elapsed_s: float
    batch_latency_p50_s: float  # time to settle one batch, retries included
    batch_latency_max_s: float

    def as_metadata(self) -> dict[str, int | float]:
        """Flat numbers, ready to report as asset metadata."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class DeliveryReport:
    results: list[DeliveryResult]  # one per row, in LSN order
    stats: DeliveryStats

    @property
    def dead_letters(self) -> list[DeliveryResult]:
        return [r for r in self.results if r.status == "dead_letter"]


def _item_subscription(item: OutboundItem) -> str:
    return item.subscription_id


def lanes(
    items: Sequence[T], max_lanes: int, subscription: Callable[[T], str] = _item_subscription
) -> list[list[T]]:
    """Split items into at most `max_lanes` lists; one subscription's items share one lane.

    Subscriptions are dealt round-robin in order of first appearance, which is deterministic
    and spreads subscriptions evenly across lanes.
    """
    owners = [subscription(item) for item in items]
    lane_of: dict[str, int] = {}
    count = max(1, min(max_lanes, len(set(owners))))
    split: list[list[T]] = [[] for _ in range(count)]
    for item, owner in zip(items, owners, strict=True):
        lane = lane_of.setdefault(owner, len(lane_of) % count)
        split[lane].append(item)
    return [lane for lane in split if lane]


def _row_subscription(row: ChangeRow) -> str:
    return str(row.get("id"))  # as `prepare` names it; a row without one is a mapping error


def deliver(
    rows: Sequence[ChangeRow],
    client: DeliveryClient,
    *,
    window_key: str,
    batch_size: int = 100,
    max_concurrency: int = 4,
    prior_state: Mapping[str, Mapping[str, Any]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    held: Collection[str] = (),
) -> DeliveryReport:
    """Send `rows` through `client`; every row gets a result (delivered, skipped, dead letter).

    `prior_state` (subscription id -> image just before the window) is used by destinations
    whose payload depends on the previous state (accounting books price differences).
    `held`: subscriptions with an open dead letter; their rows, and a subscription's rows after
    one of them failed, are held back as dead letters (`DeliveryClient.send`).
    """
    if batch_size < 1 or max_concurrency < 1:
        raise ValueError("batch_size and max_concurrency must be at least 1")
    started = clock()
    ordered = sorted(rows, key=lambda r: r["_lsn"])
    if len({row["_lsn"] for row in ordered}) != len(ordered):
        raise ValueError("change rows with duplicate LSNs: an LSN names exactly one change")
    results: list[DeliveryResult] = []
    latencies: list[float] = []
    work = lanes(ordered, max_concurrency, _row_subscription)
    if work:
        name = f"deliver-{client.destination}"
        send = _LaneSender(client, window_key, prior_state, batch_size, set(held), clock)
        with ThreadPoolExecutor(max_workers=len(work), thread_name_prefix=name) as pool:
            for lane_results, lane_latencies in pool.map(send, work):
                results.extend(lane_results)
                latencies.extend(lane_latencies)
    results.sort(key=lambda r: r.lsn)
    stats = _stats(results, latencies, clock() - started)
    return DeliveryReport(results, stats)


def _carry(prior: dict[str, Mapping[str, Any]], rows: Sequence[ChangeRow]) -> None:
    """Each subscription's last image after `rows` (gone if deleted), for the lane's next
    batch; rows without a text id are mapping errors and carry nothing (as `journal_plan`)."""
    for row in rows:
        ident = row.get("id")
        if not isinstance(ident, str):
            continue
        if is_delete(row):
            prior.pop(ident, None)
        else:
            prior[ident] = row


@dataclass(frozen=True)
class _LaneSender:
    """Maps and sends one lane batch by batch; a subscription that failed holds back its
    later rows. Batches hold `batch_size` items that need a request (rows settled while
    mapping - echoes, mapping errors - do not shorten them)."""

    client: DeliveryClient
    window_key: str
    prior_state: Mapping[str, Mapping[str, Any]] | None
    batch_size: int
    held: set[str]
    clock: Callable[[], float]

    def __call__(self, lane: list[ChangeRow]) -> tuple[list[DeliveryResult], list[float]]:
        results: list[DeliveryResult] = []
        latencies: list[float] = []
        blocked = {_row_subscription(row) for row in lane} & self.held  # this lane's own
        prior = dict(self.prior_state or {})  # chained from batch to batch (accounting)
        pending: list[OutboundItem] = []
        size = self.batch_size
        for start in range(0, len(lane), size):
            chunk = lane[start : start + size]
            items = self.client.prepare(chunk, window_key=self.window_key, prior_state=prior)
            _carry(prior, chunk)
            for item in items:
                settled = item.settled()
                if settled is None:
                    pending.append(item)
                else:
                    results.append(settled)
            while len(pending) >= size:
                self._send(pending[:size], blocked, results, latencies)
                del pending[:size]
        if pending:
            self._send(pending, blocked, results, latencies)
        return results, latencies

    def _send(
        self,
        batch: list[OutboundItem],
        blocked: set[str],
        results: list[DeliveryResult],
        latencies: list[float],
    ) -> None:
        raise_if_stopped()  # `run` got SIGTERM: send no more (the window is not recorded)
        batch_started = self.clock()
        sent = self.client.send(batch, held=blocked)
        blocked |= {r.subscription_id for r in sent if r.status == "dead_letter"}
        results.extend(sent)
        latencies.append(self.clock() - batch_started)


def _stats(
    results: list[DeliveryResult], latencies: list[float], elapsed_s: float
) -> DeliveryStats:
    return DeliveryStats(
        rows=len(results),
        delivered=sum(r.status == "delivered" for r in results),
        skipped=sum(r.status == "skipped" for r in results),
        dead_lettered=sum(r.status == "dead_letter" for r in results),
        retried_attempts=sum(max(0, r.attempts - 1) for r in results),
        batches=len(latencies),
        elapsed_s=elapsed_s,
        batch_latency_p50_s=statistics.median(latencies) if latencies else 0.0,
        batch_latency_max_s=max(latencies, default=0.0),
    )
