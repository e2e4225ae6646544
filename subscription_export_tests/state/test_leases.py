"""Leases: one holder at a time, waiting, expiry of a crashed holder."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from subscription_export.core.db import engine_for
from subscription_export.state.leases import LeaseBusy, lease, try_acquire
from subscription_export.state.migrate import upgrade


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def state(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgresql"
        else f"sqlite:///{tmp_path / 'state.db'}"
    )
    engine = engine_for(url, writer=True)
    upgrade(engine)
    return engine


def test_second_holder_is_refused_until_release(state) -> None:  # type: ignore[no-untyped-def]
    assert try_acquire(state, "parquet:w1", "run A") is None
    assert try_acquire(state, "parquet:w1", "run A") is None  # re-entrant for the same holder
    other = try_acquire(state, "parquet:w1", "run B")
    assert other is not None and other.holder == "run A"
    assert try_acquire(state, "parquet:w2", "run B") is None  # other windows are free
    with (
        pytest.raises(LeaseBusy, match="being exported by run A"),
        lease(state, "parquet:w1", "run B", wait_s=0.3),
    ):
        pass


def test_expired_lease_is_taken_over(state) -> None:  # type: ignore[no-untyped-def]
    assert try_acquire(state, "csv:w1", "crashed run", ttl_s=0.05) is None
    time.sleep(0.1)
    assert try_acquire(state, "csv:w1", "new run") is None


def test_waiter_gets_the_lease_after_the_holder_finishes(state) -> None:  # type: ignore[no-untyped-def]
    order: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with lease(state, "jsonl:w1", "run A", wait_s=1):
            holding.set()
            time.sleep(0.4)
            order.append("A done")

    thread = threading.Thread(target=first)
    thread.start()
    holding.wait(5)
    with lease(state, "jsonl:w1", "run B", wait_s=10, poll_s=0.05):
        order.append("B in")
    thread.join()
    assert order == ["A done", "B in"]
