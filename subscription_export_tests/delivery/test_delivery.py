"""Bounded-concurrency delivery: ordering per subscription, batch sizes, results and stats."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from subscription_export.delivery.clients import (
    AccountingClient,
    DeliveryClient,
    DeliveryResult,
    OutboundItem,
)
from subscription_export.delivery.dispatch import deliver, lanes
from subscription_export.delivery.mapping import ChangeRow, MappingError
from subscription_export.sandbox.server import SandboxServer
from subscription_export.sandbox.systems import AccountingSystem
from subscription_export_tests.delivery.factories import change_row

WINDOW = "00000000000000000001-00000000000000000100"


class RecordingClient(DeliveryClient):
    """Sends nothing; records batches, per-subscription order and peak concurrency."""

    destination = "recorder"

    def __init__(self, hold_s: float = 0.0, fail: frozenset[int] = frozenset()) -> None:
        super().__init__("http://unused.test")
        self.hold_s = hold_s
        self.fail = fail
        self.batches: list[list[int]] = []
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def _map_rows(
        self, rows: Sequence[ChangeRow], prior_state: Mapping[str, Mapping[str, Any]] | None
    ) -> dict[int, list[dict[str, Any]] | MappingError]:
        return self._map_each(rows, lambda row: {"id": row["id"]})

    def _send_items(self, items: Sequence[OutboundItem], blocked: set[str]) -> list[DeliveryResult]:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.batches.append([item.lsn for item in items])
        time.sleep(self.hold_s)
        with self._lock:
            self.active -= 1
        return [
            item.result("dead_letter", 3, "refused")
            if item.lsn in self.fail
            # two attempts for even LSNs, to check the retry statistics
            else item.result("delivered", 2 if item.lsn % 2 == 0 else 1)
            for item in items
        ]


def many_rows(subscriptions: int, changes_each: int) -> list[dict[str, Any]]:
    rows = []
    lsn = 0
    for change in range(changes_each):
        for n in range(subscriptions):
            lsn += 1
            rows.append(change_row(lsn, f"s{n}", "c" if change == 0 else "u", version=change + 1))
    return rows


def test_lanes_keep_each_subscription_in_one_lane_in_order() -> None:
    items = [OutboundItem(lsn, f"s{lsn % 3}", f"k{lsn}") for lsn in range(1, 13)]
    split = lanes(items, 2)
    assert len(split) == 2
    for lane in split:
        assert [i.lsn for i in lane] == sorted(i.lsn for i in lane)
    owners = {item.subscription_id: n for n, lane in enumerate(split) for item in lane}
    for n, lane in enumerate(split):
        assert all(owners[item.subscription_id] == n for item in lane)
    assert lanes(items, 10) and len(lanes(items, 10)) == 3  # never more lanes than subscriptions
    assert lanes([], 4) == []


def test_deliver_bounds_concurrency_and_batch_size() -> None:
    client = RecordingClient(hold_s=0.02)
    rows = many_rows(subscriptions=12, changes_each=3)
    report = deliver(rows, client, window_key=WINDOW, batch_size=4, max_concurrency=3)

    assert 1 < client.peak <= 3
    assert all(len(batch) <= 4 for batch in client.batches)
    assert sorted(lsn for batch in client.batches for lsn in batch) == list(range(1, 37))
    sent_order = [lsn for batch in client.batches for lsn in batch]
    for n in range(12):  # one subscription's changes are sent in LSN order
        mine = [r["_lsn"] for r in rows if r["id"] == f"s{n}"]
        assert [lsn for lsn in sent_order if lsn in mine] == mine
    assert [r.lsn for r in report.results] == list(range(1, 37))


def test_deliver_reports_every_row_in_lsn_order_with_stats() -> None:
    rows = [
        change_row(5, "a"),
        change_row(1, "b", origin="recorder"),  # an echo: skipped
        change_row(3, "c", id=None),  # unmappable: dead letter without a request
        change_row(2, "a", "u", version=2),
        change_row(4, "d"),
    ]
    client = RecordingClient(fail=frozenset({4}))
    report = deliver(rows, client, window_key=WINDOW, batch_size=10, max_concurrency=2)

    assert [(r.lsn, r.status) for r in report.results] == [
        (1, "skipped"),
        (2, "delivered"),
        (3, "dead_letter"),
        (4, "dead_letter"),
        (5, "delivered"),
    ]
    assert [r.idempotency_key for r in report.results][:2] == [
        f"recorder:{WINDOW}:1",
        f"recorder:{WINDOW}:2",
    ]
    assert [r.lsn for r in report.dead_letters] == [3, 4]
    stats = report.stats
    assert (stats.rows, stats.delivered, stats.skipped, stats.dead_lettered) == (5, 2, 1, 2)
    assert stats.retried_attempts == 1 + 2  # LSN 2 took two attempts, LSN 4 three
    # Lanes are dealt over all rows: b and c share one (nothing to send), a and d the other.
    assert stats.batches == len(client.batches) == 1
    assert stats.batch_latency_max_s >= stats.batch_latency_p50_s >= 0
    assert stats.as_metadata()["dead_lettered"] == 2


def test_deliver_validates_its_limits() -> None:
    with pytest.raises(ValueError):
        deliver([], RecordingClient(), window_key=WINDOW, batch_size=0)
    with pytest.raises(ValueError):
        deliver([], RecordingClient(), window_key=WINDOW, max_concurrency=0)


def test_duplicate_lsns_are_a_caller_bug() -> None:
    rows = [change_row(1, "a"), change_row(1, "b")]
    with pytest.raises(ValueError, match="duplicate LSN"):
        deliver(rows, RecordingClient(), window_key=WINDOW)


class TimelineClient(RecordingClient):
    """Records, in order, each mapping of rows and each batch sent."""

    def __init__(self) -> None:
        super().__init__()
        self.timeline: list[tuple[str, tuple[int, ...]]] = []

    def _map_rows(
        self, rows: Sequence[ChangeRow], prior_state: Mapping[str, Mapping[str, Any]] | None
    ) -> dict[int, list[dict[str, Any]] | MappingError]:
        with self._lock:
            self.timeline.append(("map", tuple(row["_lsn"] for row in rows)))
        return super()._map_rows(rows, prior_state)

    def _send_items(self, items: Sequence[OutboundItem], blocked: set[str]) -> list[DeliveryResult]:
        with self._lock:
            self.timeline.append(("send", tuple(item.lsn for item in items)))
        return super()._send_items(items, blocked)


def test_the_first_batches_go_out_before_the_last_rows_are_mapped() -> None:
    """Mapping a batch overlaps the requests of the batches before it (the remote system's
    time), instead of every row of the window being mapped before the first request."""
    client = TimelineClient()
    rows = many_rows(subscriptions=8, changes_each=10)
    deliver(rows, client, window_key=WINDOW, batch_size=5, max_concurrency=2)

    kinds = [kind for kind, _ in client.timeline]
    last_map = len(kinds) - 1 - kinds[::-1].index("map")
    assert "send" in kinds[:last_map], client.timeline
    mapped = sorted(lsn for kind, lsns in client.timeline if kind == "map" for lsn in lsns)
    assert mapped == list(range(1, 81))  # each row mapped once
    assert all(len(lsns) <= 5 for kind, lsns in client.timeline if kind == "map")


def test_rows_that_need_no_request_do_not_shorten_batches() -> None:
    """Skipped rows (echoes) are settled while mapping; the batches sent stay full."""
    rows = [
        change_row(lsn, f"s{lsn % 2}", "c" if lsn <= 2 else "u", version=lsn, origin="app")
        for lsn in range(1, 13)
    ]
    for row in rows[::3]:
        row["_origin"] = "recorder"  # an echo of the destination's own write: skipped
    client = RecordingClient()
    report = deliver(rows, client, window_key=WINDOW, batch_size=4, max_concurrency=1)

    assert [len(batch) for batch in client.batches] == [4, 4]
    assert report.stats.skipped == 4


def test_a_row_without_an_id_column_is_a_dead_letter_not_a_crash() -> None:
    row = change_row(2, "b")
    del row["id"]
    report = deliver([change_row(1, "a"), row], RecordingClient(), window_key=WINDOW)
    assert [(r.lsn, r.status) for r in report.results] == [(1, "delivered"), (2, "dead_letter")]
    assert "no subscription id" in (report.results[1].error or "")


def test_a_lane_books_an_update_against_the_image_of_its_earlier_batch() -> None:
    """Accounting maps each lane batch on its own: a subscription's update in a later batch
    is still booked as the difference to its previous change, as if all rows mapped at once."""
    rows = [
        change_row(1, "a", "c", amount="10.00"),
        change_row(2, "a", "u", amount="15.00", version=2),
        change_row(3, "a", "u", amount="12.00", version=3),
    ]
    accounting = AccountingSystem()
    with SandboxServer(accounting) as server, AccountingClient(server.url) as client:
        report = deliver(rows, client, window_key=WINDOW, batch_size=1, max_concurrency=1)
    assert [r.status for r in report.results] == ["delivered"] * 3
    assert [(e["kind"], e["amount"]) for e in accounting.journal] == [
        ("revenue", "10.00"),
        ("revenue", "5.00"),
        ("credit", "3.00"),
    ]
