"""read_ahead: the next page is fetched while the current one is written, within bounds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from mailsync.core.sync.readahead import read_ahead


def test_items_arrive_in_order_and_errors_after_the_items_before_them() -> None:
    """Every item comes through in order; a source error is raised after the items it
    produced before failing, never instead of them."""

    def source() -> Iterator[int]:
        yield from range(5)
        raise ValueError("provider failed")

    seen: list[int] = []
    with pytest.raises(ValueError, match="provider failed"):
        for item in read_ahead(source()):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_the_producer_stays_at_most_depth_items_ahead() -> None:
    """Memory stays bounded: while the consumer holds item n, the source has produced at
    most n + depth + 1 items (one buffered per depth, one being fetched)."""
    produced: list[int] = []

    def source() -> Iterator[int]:
        for n in range(20):
            produced.append(n)
            yield n

    for item in read_ahead(source(), depth=1):
        time.sleep(0.01)  # a slow writer: the producer would run far ahead if unbounded
        assert len(produced) <= item + 3


def test_fetching_overlaps_writing() -> None:
    """With a 50 ms fetch and a 50 ms write per page, ten pages take about half the serial
    time: the fetch of page n+1 runs during the write of page n."""

    def source() -> Iterator[int]:
        for n in range(10):
            time.sleep(0.05)
            yield n

    started = time.monotonic()
    for _ in read_ahead(source()):
        time.sleep(0.05)
    assert time.monotonic() - started < 0.85  # serial: 1.0 s


def test_stopping_early_closes_the_source_in_the_producer_thread() -> None:
    """A consumer that fails half-way stops the producer, which closes the source (running
    its cleanup) in the thread that advanced it; no thread is left behind."""
    closed_in: list[str] = []

    def source() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed_in.append(threading.current_thread().name)

    before = threading.active_count()
    with pytest.raises(RuntimeError):
        for item in read_ahead(source()):
            if item == 3:
                raise RuntimeError("index write failed")
    assert closed_in == ["read-ahead"]
    assert threading.active_count() == before
