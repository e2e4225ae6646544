"""A stop signal that lands inside SQLAlchemy's connection close is logged by the pool
("Exception closing connection" + traceback, then re-raised): `run` must still end on its one
line (seen in CI: test_run_stops_promptly_on_a_signal_and_releases_its_leases[15-sqlite]).

Run in a child process: the CLI has no logging handlers, so such a record goes to Python's
last-resort handler on stderr (pytest's own log capture would hide it here)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from subscription_export.core.stopping import stop_on_signals, stoppable_sleep

SCRIPT = """
import logging, signal
from subscription_export.core.stopping import Stopped, stop_on_signals

pool = logging.getLogger("sqlalchemy.pool.impl.QueuePool")
with stop_on_signals():
    try:  # what SQLAlchemy's Pool._close_connection does with any exception
        raise Stopped(signal.SIGTERM)
    except BaseException:
        pool.error("Exception closing connection %r", "<conn>", exc_info=True)
    try:
        raise RuntimeError("disk gone")
    except RuntimeError:
        pool.error("Exception closing connection %r", "<conn>", exc_info=True)
"""


def test_a_stop_inside_a_connection_close_leaves_no_traceback() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Stopped" not in done.stderr, done.stderr  # our own stop: not an error to show
    assert "RuntimeError: disk gone" in done.stderr  # any other failure still is


SLEEPERS = """
import json, os, signal, threading, time
from subscription_export.core.stopping import Stopped, stop_on_signals, stoppable_sleep

woke = []
def sleeper():
    started = time.monotonic()
    try:
        stoppable_sleep(60)
    except Stopped as stop:
        woke.append([stop.signum, time.monotonic() - started])

with stop_on_signals():
    # As during a Dagster run: another handler replaced ours and tells us nothing; only the
    # wakeup pipe sees the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    lanes = [threading.Thread(target=sleeper) for _ in range(4)]
    for lane in lanes:
        lane.start()
    time.sleep(0.3)  # all four are asleep
    os.kill(os.getpid(), signal.SIGTERM)
    for lane in lanes:
        lane.join(20)
    late = time.monotonic()
    try:
        stoppable_sleep(60)  # a sleep that starts after the stop does not start
    except Stopped:
        woke.append([signal.SIGTERM, time.monotonic() - late])
print(json.dumps(woke))
"""


def test_a_stop_wakes_every_sleeping_thread_at_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SLEEPERS], capture_output=True, text=True, timeout=45
    )
    assert done.returncode == 0, done.stderr
    woke = json.loads(done.stdout)
    assert [signum for signum, _ in woke] == [signal.SIGTERM] * 5, woke
    assert max(took for _, took in woke) < 5, woke  # not the 60 s asked for


def test_without_a_stop_it_sleeps_the_time_asked() -> None:
    started = time.monotonic()
    stoppable_sleep(0.2)  # outside `stop_on_signals`: a plain sleep
    with stop_on_signals():
        stoppable_sleep(0.2)  # no signal: the whole time
    assert 0.4 <= time.monotonic() - started < 5
