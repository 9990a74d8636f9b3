"""How many submits may be on the wire at once.

fal answers every submit of an account out of credit with a 403 (fal-protocol.md §11 row 4),
and a submit already on the wire when that starts cannot be called back. So freed slots do not
become a burst of submits: the window is what keeps up with the accepts — twice the accept rate
times a submit's shortest recent round trip, at least `MIN_WINDOW`. While submits wait, the
accept rate is what the window lets through, so the window doubles each round trip, as TCP's
slow start does; when fal starts refusing, only the few submits on the wire meet the refusal.
A stop (the first refusal stops the run) turns back the submits still waiting for a place.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

MIN_WINDOW = 3
RATE_SPAN = 1.0  # seconds of accepts the accept rate is measured over (at least 4 round trips)


class SubmitWindow:
    def __init__(self, ceiling: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = max(ceiling, MIN_WINDOW)
        self.size = MIN_WINDOW
        self.open = 0
        self.rtt: float | None = None
        self._clock = clock
        self._accepts: deque[tuple[float, float]] = deque()  # (when, round trip)
        self._waiting: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return f"SubmitWindow(open={self.open}/{self.size}, waiting={len(self._waiting)})"

    async def acquire(self) -> None:
        if self.open < self.size and not self._waiting:
            self.open += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._pass_on()  # it was handed a place it will not use
            else:
                self._waiting.remove(turn)
            raise

    def release(self, rtt: float | None) -> None:
        """A submit came back: `rtt` its round trip if fal accepted it, else None."""
        if rtt is not None:
            self._accepted(rtt)
        self._pass_on()

    def _accepted(self, rtt: float) -> None:
        now = self._clock()
        self._accepts.append((now, rtt))
        span = max(RATE_SPAN, 4 * (self.rtt or 0.0))
        while self._accepts[0][0] < now - span:
            self._accepts.popleft()
        # The shortest recent round trip: what the network and fal take, without the time a
        # submit spent queued behind others (as BBR's min_rtt), so a busy moment does not
        # widen the window it is stuck in.
        self.rtt = min(r for _, r in self._accepts)
        elapsed = max(now - self._accepts[0][0], self.rtt, 1e-3)
        rate = len(self._accepts) / elapsed
        self.size = min(self.ceiling, max(MIN_WINDOW, math.ceil(2 * rate * self.rtt)))

    def _pass_on(self) -> None:
        """Close one place, then give the free places to the next waiters."""
        self.open -= 1
        while self._waiting and self.open < self.size:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                self.open += 1
