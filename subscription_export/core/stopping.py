"""Stopping promptly on SIGTERM and SIGINT (`run`): abort the current step, release what it
holds, exit 128 + the signal number.

`stop_on_signals()` (the CLI's main thread) installs handlers that raise `Stopped`, so code
between Dagster runs (cutting windows, reconciling, the `--watch` sleep) stops where it is and
its `with` blocks (leases, transactions) unwind. During a Dagster run, Dagster replaces both
handlers with its own, which raises an interrupt inside the running step and then *retries* the
step (its retry policy covers interrupts), and does not say which signal came. So the signal
number is also taken from below the Python handlers: `signal.set_wakeup_fd` makes the
interpreter write the number of every signal it receives to a pipe, whoever's handler runs.
`stop_requested()` reads that pipe; the Dagster steps check it to fail without retry (and to
not start at all), delivery lanes check it between batches, and the runner checks it after
each run. Nothing here imports Dagster.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_lock = threading.Lock()
_received: list[int] = []
_pipe: list[int] = []  # the read end of the wakeup pipe, while `stop_on_signals` is active
_deferring = 0  # > 0 inside `deferred()`


class Stopped(BaseException):
    """A stop signal arrived. A BaseException, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def stop_requested() -> int | None:
    """The first stop signal received under `stop_on_signals`, else None (any thread)."""
    with _lock:
        for fd in _pipe:
            with suppress(BlockingIOError, OSError):
                _received.extend(s for s in os.read(fd, 512) if s in STOP_SIGNALS)
        return _received[0] if _received else None


def raise_if_stopped() -> None:
    if (signum := stop_requested()) is not None:
        raise Stopped(signum)


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    with _lock:
        _received.append(signum)
        if _deferring:
            return  # inside `deferred()`: the caller checks when it is done
    raise Stopped(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Record a stop signal without raising until the block ends: for a Dagster run, whose own
    bookkeeping (run records, event log) a `Stopped` raised at a random point would leave
    half-done. Dagster interrupts the step itself; the steps check `stop_requested()`."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    raise_if_stopped()


class _OwnStopIsNoError(logging.Filter):
    """Drops a log record whose exception is our own `Stopped`: SQLAlchemy's pool logs
    "Exception closing connection" with a traceback when the signal lands inside a connection
    close, then re-raises it, and the stop already ends `run` on its own one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], Stopped))


_quiet_stop = _OwnStopIsNoError()


def _output_handlers() -> list[logging.Handler]:
    """Where an error record ends up: the root's handlers, else the last-resort one."""
    handlers = list(logging.getLogger().handlers)
    return handlers or ([logging.lastResort] if logging.lastResort else [])


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM/SIGINT raise `Stopped` in the main thread and are recorded for `stop_requested`
    while Dagster's handlers are installed. Main thread only."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    previous = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS}
    _pipe.append(read)
    quieted = _output_handlers()
    for handler in quieted:
        handler.addFilter(_quiet_stop)
    try:
        yield
    finally:
        for handler in quieted:
            handler.removeFilter(_quiet_stop)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_fd)
        with _lock:
            _pipe.remove(read)
            _received.clear()
        os.close(read)
        os.close(write)
