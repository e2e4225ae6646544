"""The set-based reads of a feed batch (`reads.BatchReads`) give every snapshot exactly as the
per-record queries (`reads.RowReads`) do: with a sync base and provenance, an open conflict, a
deleted row, and a change log deeper than is loaded per subscription (the base image and a
field's time then come from the per-record fallback). Also the cut of a batch into rounds, and
two systems' batches over the same records applied at once on PostgreSQL (each round locks
all its rows)."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from subscription_export.core.settings import Settings
from subscription_export.delivery.clients import RemoteChange
from subscription_export.reconcile.apply import rounds
from subscription_export.reconcile.feeds import fetch_changes
from subscription_export.reconcile.reads import BatchReads, RowReads
from subscription_export.reconcile.snapshot import snapshot_from
from subscription_export.reconcile.source_batch import HISTORY_DEPTH
from subscription_export.reconcile.source_side import column_types
from subscription_export.reconcile.sync_state import list_conflicts
from subscription_export_tests.reconcile.test_reconcile import World, record, world

DEEP_UPDATES = HISTORY_DEPTH + 6


def _prepare(w: World) -> None:
    for sid in ("plain", "conflicted", "gone", "deep"):
        w.insert(sid)
    w.deliver()
    w.remote_edit("erp", "plain", 2, name="ERP name")
    w.update("conflicted", 1, amount="12.00")
    w.remote_edit("erp", "conflicted", 2, amount="15.00")
    w.reconcile("erp")  # plain: written back (base, provenance); conflicted: queued
    assert [c.subscription_id for c in list_conflicts(w.project.state)] == ["conflicted"]
    w.remote_edit("erp", "plain", 3, category="erp")
    w.remote_edit("erp", "conflicted", 3, status="paused")
    w.delete("gone")
    w.remote_edit("erp", "gone", 3, name="edited after the delete")
    w.update("deep", 1, status="past_due")  # its time is older than the loaded history
    for minute in range(DEEP_UPDATES):
        w.update("deep", 1 + minute / 100, amount=f"{11 + minute}.00")
    w.remote_edit("erp", "deep", 4, name="ERP deep")  # made on the image first delivered


@pytest.mark.parametrize("source_url", ["sqlite", "postgresql"], indirect=True)
def test_batch_reads_give_the_per_record_snapshots(settings: Settings, tmp_path: Path) -> None:
    with world(settings, tmp_path, {"strategy": "manual"}, ("erp",)) as w:
        _prepare(w)
        config = w.destinations.destinations["erp"]
        policy = w.policies.for_destination("erp")
        changes = fetch_changes(w.project, config).changes
        assert [c.id for c in changes] == ["plain", "conflicted", "gone", "deep"]
        with w.project.source.connect() as conn, w.project.state.connect() as state:
            types = column_types(conn)
            batch = BatchReads.load(conn, state, "erp", [c.id for c in changes], types, lock=False)
            rows = RowReads(conn, state, "erp", types, lock=False)
            assert not batch.histories["deep"].complete  # the fallback is exercised
            for change in changes:
                expected = snapshot_from(rows, config, change, ignored=policy.ignored)
                got = snapshot_from(batch, config, change, ignored=policy.ignored)
                assert got == expected, change.id
            deep = snapshot_from(rows, config, changes[-1], ignored=policy.ignored)
        assert deep.base is not None and deep.base["amount"] == deep.remote.record["amount"]  # type: ignore[index]
        assert deep.field_origins["status"].changed_at < deep.field_origins["amount"].changed_at


def _change(ident: str, cursor: int) -> RemoteChange:
    return RemoteChange(cursor, ident, "upsert", {}, 1, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def test_rounds_keep_feed_order_with_distinct_subscriptions() -> None:
    feed = [_change(ident, n) for n, ident in enumerate("abcaddeb", start=1)]
    cut = rounds(feed, limit=3)
    assert [[c.id for c in r] for r in cut] == [["a", "b", "c"], ["a", "d"], ["d", "e", "b"]]
    assert [c for r in cut for c in r] == feed


@pytest.mark.parametrize("source_url", ["postgresql"], indirect=True)
def test_two_systems_apply_batches_of_the_same_records_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    with world(settings, tmp_path, {"strategy": "last_writer_wins"}, ("erp", "crm")) as w:
        w.batch_limit = 100
        sids = [f"s{n:02d}" for n in range(60)]
        for sid in sids:
            w.insert(sid)
        w.deliver()
        for sid in sids:
            w.remote_edit("erp", sid, 2, amount=Decimal("15.00"))
            w.remote_edit("crm", sid, 3, name=f"CRM {sid}")
        with ThreadPoolExecutor(2) as pool:
            reports = list(pool.map(w.reconcile, ["erp", "crm"]))
        assert [r.applied.written_back for r in reports] == [len(sids), len(sids)]
        w.settle()
        for sid in sids:
            w.assert_converged(
                sid, {**record(amount=Decimal("15.00"), name=f"CRM {sid}"), "id": sid}
            )
