"""Steps stop for good on SIGTERM/SIGINT (see `core/stopping.py`).

Dagster turns a signal that arrives inside a step into an interrupt and then retries the step
under its retry policy (meant for preempted pods), so `run` used to carry on for minutes after
SIGTERM. A step body wrapped in `stoppable()` fails without retry instead, and a step that
starts after the signal fails at once, so the run ends within moments; the `with` blocks of the
interrupted step (its lease above all) unwind on the way out.
"""

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from subscription_export.core.stopping import stop_requested


def _stopped(signum: int | None) -> dg.Failure:
    name = signal.Signals(signum).name if signum is not None else "an interrupt"
    return dg.Failure(f"stopped by {name}", allow_retries=False)


@contextmanager
def stoppable() -> Iterator[None]:
    if (signum := stop_requested()) is not None:
        raise _stopped(signum)
    try:
        yield
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
        raise _stopped(stop_requested()) from exc
