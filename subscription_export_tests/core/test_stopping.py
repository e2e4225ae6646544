"""A stop signal that lands inside SQLAlchemy's connection close is logged by the pool
("Exception closing connection" + traceback, then re-raised): `run` must still end on its one
line (seen in CI: test_run_stops_promptly_on_a_signal_and_releases_its_leases[15-sqlite]).

Run in a child process: the CLI has no logging handlers, so such a record goes to Python's
last-resort handler on stderr (pytest's own log capture would hide it here)."""

from __future__ import annotations

import subprocess
import sys

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
