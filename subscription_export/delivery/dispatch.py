"""Deliver a window's change rows to one destination with bounded concurrency.

Rows are split into lanes by subscription id, and each lane sends its rows in LSN order,
`batch_size` at a time, on its own worker thread (at most `max_concurrency` lanes). Changes to
one subscription therefore always arrive in order - the ERP and CRM refuse a version older than
the one they hold, so reordering them would turn good changes into dead letters - while
different subscriptions are delivered in parallel over the client's pooled connections.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from subscription_export.core.stopping import raise_if_stopped
from subscription_export.delivery.clients import DeliveryClient, DeliveryResult, OutboundItem
from subscription_export.delivery.mapping import ChangeRow


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


def lanes(items: Sequence[OutboundItem], max_lanes: int) -> list[list[OutboundItem]]:
    """Split items into at most `max_lanes` lists; one subscription's items share one lane.

    Subscriptions are dealt round-robin in order of first appearance, which is deterministic
    and spreads subscriptions evenly across lanes.
    """
    lane_of: dict[str, int] = {}
    count = max(1, min(max_lanes, len({item.subscription_id for item in items})))
    split: list[list[OutboundItem]] = [[] for _ in range(count)]
    for item in items:
        lane = lane_of.setdefault(item.subscription_id, len(lane_of) % count)
        split[lane].append(item)
    return [lane for lane in split if lane]


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
    items = client.prepare(rows, window_key=window_key, prior_state=prior_state)
    results: list[DeliveryResult] = []
    to_send: list[OutboundItem] = []
    for item in items:
        settled = item.settled()
        if settled is None:
            to_send.append(item)
        else:
            results.append(settled)

    latencies: list[float] = []
    work = lanes(to_send, max_concurrency)
    if work:
        name = f"deliver-{client.destination}"
        send = _lane_sender(client, batch_size, set(held), clock)
        with ThreadPoolExecutor(max_workers=len(work), thread_name_prefix=name) as pool:
            for lane_results, lane_latencies in pool.map(send, work):
                results.extend(lane_results)
                latencies.extend(lane_latencies)
    results.sort(key=lambda r: r.lsn)
    stats = _stats(results, latencies, clock() - started)
    return DeliveryReport(results, stats)


def _lane_sender(
    client: DeliveryClient, batch_size: int, held: set[str], clock: Callable[[], float]
) -> Callable[[list[OutboundItem]], tuple[list[DeliveryResult], list[float]]]:
    """Send one lane batch by batch; a subscription that failed holds back its later rows."""

    def run_lane(lane: list[OutboundItem]) -> tuple[list[DeliveryResult], list[float]]:
        lane_results: list[DeliveryResult] = []
        lane_latencies: list[float] = []
        blocked = {item.subscription_id for item in lane} & held  # this lane's own
        for start in range(0, len(lane), batch_size):
            raise_if_stopped()  # `run` got SIGTERM: send no more (the window is not recorded)
            batch_started = clock()
            sent = client.send(lane[start : start + batch_size], held=blocked)
            blocked |= {r.subscription_id for r in sent if r.status == "dead_letter"}
            lane_results.extend(sent)
            lane_latencies.append(clock() - batch_started)
        return lane_results, lane_latencies

    return run_lane


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
