"""Invariant 3: watermarks advance contiguously by compare-and-set, on SQL and Redis."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from subscription_export.core.db import engine_for
from subscription_export.core.errors import WatermarkConflict
from subscription_export.state.migrate import upgrade
from subscription_export.state.progress import (
    CompletedExport,
    advance,
    advance_to,
    record_completed,
)
from subscription_export.state.watermarks import WatermarkStore, watermark_store


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.integration),
        pytest.param("redis", marks=pytest.mark.integration),
    ]
)
def stores(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """(watermark store, state engine) for each backend; the ledger is always SQL."""
    if request.param == "postgresql":
        state = engine_for(request.getfixturevalue("pg_url"), writer=True)
    else:
        state = engine_for(f"sqlite:///{tmp_path / 'state.db'}", writer=True)
    upgrade(state)
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return watermark_store(url, state), state


def _done(state, consumer: str, lo: int, hi: int) -> None:  # type: ignore[no-untyped-def]
    key = f"{lo:020d}-{hi:020d}"
    record_completed(state, CompletedExport(consumer, key, lo, hi, hi - lo + 1, 1, "0" * 64, key))


def test_cas_semantics(stores) -> None:  # type: ignore[no-untyped-def]
    store: WatermarkStore = stores[0]
    assert store.get("csv") == 0
    assert store.compare_and_set("csv", 0, 10)
    assert not store.compare_and_set("csv", 0, 20)  # stale expectation
    assert store.compare_and_set("csv", 10, 20)
    assert store.get("csv") == 20
    assert store.all() == {"csv": 20}


def test_advance_is_contiguous(stores) -> None:  # type: ignore[no-untyped-def]
    store, state = stores
    _done(state, "parquet", 1, 100)
    _done(state, "parquet", 201, 300)  # finished out of order: 101..200 still missing
    assert advance(store, state, "parquet") == 100
    with pytest.raises(WatermarkConflict, match=r"101\.\.300"):
        advance_to(store, state, "parquet", 100, 300)
    _done(state, "parquet", 101, 200)
    assert advance(store, state, "parquet") == 300
    # A backfill of an old window records it again but never moves the watermark back.
    _done(state, "parquet", 1, 100)
    assert advance(store, state, "parquet") == 300
    assert store.get("parquet") == 300


def test_advance_to_refuses_stale_and_backwards(stores) -> None:  # type: ignore[no-untyped-def]
    store, state = stores
    _done(state, "jsonl", 1, 50)
    _done(state, "jsonl", 51, 80)
    advance_to(store, state, "jsonl", 0, 50)
    with pytest.raises(WatermarkConflict, match="no longer 0"):
        advance_to(store, state, "jsonl", 0, 50)  # a second run that read 0 earlier
    with pytest.raises(WatermarkConflict, match="cannot move"):
        advance_to(store, state, "jsonl", 50, 40)
    advance_to(store, state, "jsonl", 50, 80)
    assert store.get("jsonl") == 80


def test_racing_advancers_exactly_one_wins(stores) -> None:  # type: ignore[no-untyped-def]
    store, state = stores
    _done(state, "erp", 1, 10)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def racer() -> None:
        barrier.wait()
        try:
            advance_to(store, state, "erp", 0, 10)
            result = "won"
        except WatermarkConflict:
            result = "lost"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert store.get("erp") == 10
