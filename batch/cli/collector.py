"""The cyclic garbage collector while items run: collected less often (`fewer_collections`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 50_000  # allocations between collections of the youngest generation


@contextmanager
def fewer_collections(young: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Run the block with the cyclic garbage collector's youngest generation collected every
    `young` allocations instead of every 700.

    A run allocates many short-lived objects per item (requests, responses, futures, rows)
    that reference counting frees at once, and few of them form cycles. At the default
    threshold the collector still runs very often, and each time promotes the objects that
    happen to be alive at that moment, so the older generations fill with garbage and are
    scanned over and over, in pauses that stall the event loop. Collecting the youngest
    generation far less often leaves those objects to reference counting and the run's
    collections to a handful. Blocks that overlap (two jobs run at once on one event loop)
    restore the setting when the last one ends; the count is not meant for runs on event
    loops in several threads."""
    global _open_blocks, _threshold_before
    if _open_blocks == 0:
        _threshold_before = gc.get_threshold()
        if _threshold_before[0]:  # 0: the process turned automatic collection off; leave it
            gc.set_threshold(max(young, _threshold_before[0]), *_threshold_before[1:])
    _open_blocks += 1
    try:
        yield
    finally:
        _open_blocks -= 1
        if _open_blocks == 0:
            gc.set_threshold(*_threshold_before)


_open_blocks = 0  # `fewer_collections` blocks open now
_threshold_before = gc.get_threshold()  # the collector's setting when the first one opened
