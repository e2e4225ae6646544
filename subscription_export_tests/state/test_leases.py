"""Leases: one holder at a time, waiting, expiry of a crashed holder."""

from __future__ import annotations

import datetime as dt
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.db import engine_for
from subscription_export.state.leases import LeaseBusy, LeaseLost, lease, try_acquire
from subscription_export.state.migrate import upgrade
from subscription_export.state.tables import leases


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


# A helper process that takes a lease and then waits to be killed (a run killed mid-export).
_HOLD = """
import sys, time
from subscription_export.core.db import engine_for
from subscription_export.state.leases import try_acquire
engine = engine_for(sys.argv[1], writer=True)
assert try_acquire(engine, sys.argv[2], "run killed", ttl_s=600) is None
print("held", flush=True)
time.sleep(600)
"""


def hold_then_kill(url: str, name: str) -> int:
    """Take `name` in a real subprocess with a 10-minute TTL, SIGKILL it; its pid."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, url, name], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
    finally:
        proc.kill()
        proc.wait(30)
    return proc.pid


def test_a_dead_holder_on_this_host_is_taken_over_at_once(state, caplog) -> None:  # type: ignore[no-untyped-def]
    dead = hold_then_kill(state.url.render_as_string(hide_password=False), "parquet:w9")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), lease(state, "parquet:w9", "run B", wait_s=5):
        took = time.monotonic() - started
    assert took < 2, took  # not the old TTL (15 minutes), not the wait
    [takeover] = [r.getMessage() for r in caplog.records if "took the lease over" in r.getMessage()]
    assert (
        "run B took the lease over from run killed" in takeover and f":{dead} is gone" in takeover
    )


def test_a_working_holder_keeps_its_lease_by_heartbeat(state) -> None:  # type: ignore[no-untyped-def]
    """The TTL is short, the work is longer: the heartbeat renews it, nobody takes it over."""
    holding, done = threading.Event(), threading.Event()

    def work() -> None:
        with lease(state, "erp:w1", "run A", wait_s=1, ttl_s=0.6):
            holding.set()
            done.wait(10)

    thread = threading.Thread(target=work)
    thread.start()
    holding.wait(5)
    try:
        deadline = time.monotonic() + 2.0  # more than three TTLs
        while time.monotonic() < deadline:
            other = try_acquire(state, "erp:w1", "run B", ttl_s=0.6)
            assert other is not None and other.holder == "run A"
            time.sleep(0.1)
    finally:
        done.set()
        thread.join()
    assert try_acquire(state, "erp:w1", "run B") is None  # released at the end


def test_a_holder_whose_lease_was_taken_over_stops_loudly(state) -> None:  # type: ignore[no-untyped-def]
    with lease(state, "csv:w1", "run A", wait_s=1) as held:
        held.check()  # ours: renews
        # What another process's takeover does to the row (its heartbeat had stopped).
        with state.begin() as conn:
            conn.execute(
                sa.update(leases).values(holder="run B", acquired_at=dt.datetime.now(dt.UTC))
            )
        with pytest.raises(LeaseLost, match=r"csv:w1: the lease of run A was lost.*run B"):
            held.check()
    assert try_acquire(state, "csv:w1", "run C") is not None  # run B's lease is left alone


def test_a_waiting_run_says_who_holds_the_lease_and_until_when(state, caplog) -> None:  # type: ignore[no-untyped-def]
    assert try_acquire(state, "jsonl:w1", "run A") is None
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(LeaseBusy, match="run A"),
        lease(state, "jsonl:w1", "run B", wait_s=0.5, poll_s=0.05),
    ):
        pass
    said = [r.getMessage() for r in caplog.records if "waiting for jsonl:w1" in r.getMessage()]
    assert len(said) == 1, said  # once, not once per poll
    assert re.search(r"held by run A since \S+ \S+ UTC, until \S+ \S+ UTC", said[0]), said


def test_a_stop_signal_during_release_still_releases(state, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SIGINT landing while a lease is being released (CI: a `cycle:` claim left behind by
    `run --watch` stopped with SIGINT) must not leave the lease row behind."""
    import os
    import signal

    from subscription_export.core.stopping import Stopped, stop_on_signals
    from subscription_export.state import leases as module

    original = module.release

    def interrupted_release(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGINT)  # delivered at the next bytecode, inside release
        time.sleep(0.05)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "release", interrupted_release)
    with pytest.raises(Stopped), stop_on_signals(), lease(state, "cycle:w", "me", wait_s=0):
        pass
    with state.connect() as conn:
        assert conn.execute(sa.select(leases)).all() == []


def test_a_stop_signal_while_the_heartbeat_starts_still_releases(state, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM landing inside `Thread.start()` of the heartbeat (CI: `run` exited 1 with
    "cannot join thread before it is started" instead of 143): the stop is what surfaces, and
    the lease row is released."""
    import threading

    from subscription_export.core.stopping import Stopped
    from subscription_export.state import leases as module

    class InterruptedStart(threading.Thread):
        def start(self) -> None:
            raise Stopped(15)  # the handler ran before the thread began

    monkeypatch.setattr(module.threading, "Thread", InterruptedStart)
    with pytest.raises(Stopped), lease(state, "cycle:w", "me", wait_s=0):
        pass
    with state.connect() as conn:
        assert conn.execute(sa.select(leases)).all() == []
