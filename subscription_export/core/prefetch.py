"""Run an iterator on its own thread, a bounded number of items ahead of its consumer."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from queue import Empty, Full, Queue
from typing import TypeVar, cast

T = TypeVar("T")
_DONE = object()


class _Raised:
    """An exception of the producer, carried to the consumer (never confused with an item)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(items: Iterator[T], depth: int, name: str) -> Iterator[T]:
    """Produce the next `depth` items on a thread (`name`) while the caller works on this one.

    Work that releases the GIL (COPY's socket reads, Arrow's parsing and conversion) overlaps
    the caller's; memory stays bounded at `depth` items in the queue plus one in each hand.
    Items keep their order. Errors are re-raised in the caller; a caller that stops early
    stops the producer at its next item and closes `items`.
    """
    queue: Queue[object] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put(item, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            queue.put(_Raised(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name=name, daemon=True)
    producer.start()
    try:
        while True:
            item = queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield cast(T, item)
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(Empty):
                queue.get(timeout=0.1)
        producer.join()
