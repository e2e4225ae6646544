"""Why a Dagster run failed, as the CLI says it: the exception that started it (not Dagster's
"Exceeded max_retries of 3" or `Failure` wrapper) on one line, and the exit code its class
declares (`SubscriptionExportError.exit_code`: 3 for a contract refusal or a held lease)."""

from __future__ import annotations

import pydoc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg

from subscription_export.core.errors import SubscriptionExportError

RUN_FAILED = 1  # a failure no exception class of ours describes: the run failed, try again


@dataclass(frozen=True)
class RunFailure:
    message: str  # one line: the original exception's message
    exit_code: int
    detail: str  # Dagster's whole error text with stacks (printed with --debug)


def _chain(error: Any) -> Iterator[Any]:
    """A SerializableErrorInfo and the errors it was raised from (`raise ... from`)."""
    while error is not None:
        yield error
        error = error.cause


def _qualified_name(error: Any) -> str:
    # `message` is traceback.format_exception_only: "package.module.Class: text".
    head, sep, _ = str(error.message).partition(": ")
    return head if sep and head.endswith(str(error.cls_name)) else str(error.cls_name)


def _text(error: Any) -> str:
    head = _qualified_name(error)
    message = str(error.message)
    if message.startswith(head + ": "):
        message = message[len(head) + 2 :]
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else head


def _exit_code(error: Any) -> int:
    name = _qualified_name(error)
    if not name.startswith("subscription_export."):
        return RUN_FAILED
    cls = pydoc.locate(name)  # our own classes only: the exit code lives on the class
    if isinstance(cls, type) and issubclass(cls, SubscriptionExportError):
        return int(cls.exit_code)
    return RUN_FAILED


def root_cause(error: Any) -> RunFailure:
    """The first of our own errors in the chain (it says what to do; it may be raised from a
    lower-level one), else the last one: what Dagster's wrappers (the step execution error,
    the retry request, a `Failure`) were raised from."""
    chain = list(_chain(error))
    ours = [e for e in chain if _qualified_name(e).startswith("subscription_export.")]
    cause = ours[0] if ours else chain[-1]
    return RunFailure(_text(cause), _exit_code(cause), str(error.to_string()))


def run_failures(events: Iterable[dg.DagsterEvent]) -> list[RunFailure]:
    """One per failed step; the run's own failure when no step failed (e.g. a resource)."""
    steps, runs = [], []
    for event in events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            steps.append(root_cause(event.step_failure_data.error))
        elif event.is_run_failure:
            error = getattr(event.event_specific_data, "error", None)
            if error is not None:
                runs.append(root_cause(error))
    return steps or runs
