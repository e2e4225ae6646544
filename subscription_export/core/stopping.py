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

`stoppable_sleep()` is the sleep of every wait on a run's path (retry backoff, the ordering
poll, the lease wait, `--watch`): a stop wakes it at once, in any thread, and it raises
`Stopped`. Otherwise a delivery lane backing off for tens of seconds would keep the step (which
joins its lanes) alive past Kubernetes' 30 s grace, and the pod would be SIGKILLed with its
leases held. It waits in `poll` on the wakeup pipe - written by the interpreter's C-level
handler, so even while the main thread is busy - and on a second "latch" pipe that gets one byte
once a stop is recorded and is never drained: the wakeup pipe is drained by whichever thread
reads it first, and a sleeper that started its `poll` just after would otherwise sleep on.
"""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_lock = threading.Lock()
_received: list[int] = []
_pipe: list[int] = []  # the read end of the wakeup pipe, while `stop_on_signals` is active
_latch: list[tuple[int, int]] = []  # (read, write): readable once a stop is recorded
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
                _record(s for s in os.read(fd, 512) if s in STOP_SIGNALS)
        return _received[0] if _received else None


def _record(signums: Iterable[int]) -> None:
    """Note stop signals (under `_lock`); the first one sets the latch that wakes sleepers."""
    was_stopped = bool(_received)
    _received.extend(signums)
    if _received and not was_stopped:
        for _, write in _latch:
            with suppress(BlockingIOError, OSError):
                os.write(write, b"\0")


def stoppable_sleep(seconds: float) -> None:
    """`time.sleep`, but a stop signal (under `stop_on_signals`) ends it at once by raising
    `Stopped`, in any thread; also raises if the stop came before. Without `stop_on_signals`
    (a Dagster daemon's run worker: Dagster owns the signals) a plain sleep."""
    deadline = time.monotonic() + seconds
    while True:
        raise_if_stopped()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        with _lock:  # read afresh each round: `stop_on_signals` may have ended meanwhile
            fds = [*_pipe, *(read for read, _ in _latch)]
        if not fds:
            time.sleep(remaining)
            return
        # poll, not select: no FD_SETSIZE limit. A pipe closed under us (`stop_on_signals`
        # ended) answers POLLNVAL at once and the next round reads the lists afresh.
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.poll(math.ceil(remaining * 1000))


def raise_if_stopped() -> None:
    if (signum := stop_requested()) is not None:
        raise Stopped(signum)


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    with _lock:
        _record((signum,))
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
    latch = os.pipe()
    for fd in (read, write, *latch):
        os.set_blocking(fd, False)
    previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    previous = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS}
    with _lock:
        _pipe.append(read)
        _latch.append(latch)
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
            _latch.remove(latch)
            _received.clear()
        for fd in (read, write, *latch):
            os.close(fd)
