"""Fetches the next provider page while the current one is written, so the two overlap."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def read_ahead(pages: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Yield what `pages` yields, produced by a background thread at most `depth` items ahead
    of the consumer (so memory stays bounded). An exception of `pages` is raised here, after
    the items before it. When the consumer stops early (it raised, or closed this generator),
    the producer stops after the item it is fetching and closes `pages` in its own thread,
    the only thread that ever advances it."""
    buffer: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in pages:
                if not offer("item", item):
                    return
            offer("done", None)
        except BaseException as exc:  # handed to the consumer, raised there
            offer("error", exc)
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        producer.join()
