"""The simulator's wall clock, and `ManualClock`, a clock tests move by hand.

`Simulator(clock=...)` reads every wall-clock time it keeps from one callable returning epoch
seconds (default `time.time`): the jobs' submitted/started/completed stamps and their
retention, the CDN tokens' life, and the submit rate limit. A test passes a `ManualClock` and
calls `advance()` instead of sleeping until a result expires or a token runs out:

    clock = ManualClock()
    async with Simulator(clock=clock, retention_s=60) as sim:
        ...                 # submit, wait for COMPLETED
        clock.advance(60)   # the result is gone at once

Event-loop timers (service times, start timeouts, stream pings, webhook retries) run on the
loop's clock, not this one; webhook signatures carry the real time, which receivers check.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]

DEFAULT_START = 1_700_000_000.0  # an ordinary epoch time (2023-11-14), far from 0


class ManualClock:
    """Epoch seconds that change only when told: `clock()`, `clock.advance(s)`, `clock.now`."""

    def __init__(self, start: float = DEFAULT_START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now})"

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (never back); returns the new time."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        self.now += seconds
        return self.now
