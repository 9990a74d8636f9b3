"""How many submits may be on the wire at once.

fal answers every submit of an account out of credit with a 403 (fal-protocol.md §11 row 4),
and a submit already on the wire when that starts cannot be called back. So freed slots do not
become a burst of submits: the window starts at `MIN_WINDOW`, opens one more place for each
accepted submit while others wait for one (as TCP's slow start does, so a run that needs many
submits on the wire gets them within a few round trips), and when none wait settles back to
what keeps up with the accepts — twice the accept rate times the mean round trip. A stop (the
first refusal stops the run) turns back the submits still waiting for a place.
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
        self._rtt_sum = 0.0  # of the round trips in `_accepts`, kept as they come and go
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
        self._rtt_sum += rtt
        span = max(RATE_SPAN, 4 * (self.rtt or 0.0))
        while self._accepts[0][0] < now - span:
            self._rtt_sum -= self._accepts.popleft()[1]
        # The mean recent round trip: under load a submit also waits behind the others, and
        # the window must cover that wait too, or it caps throughput at window / round trip.
        self.rtt = self._rtt_sum / len(self._accepts)
        if self._waiting:  # submits wait for a place: open one more (slow start)
            self.size = min(self.ceiling, self.size + 1)
            return
        elapsed = max(now - self._accepts[0][0], self.rtt, 1e-3)
        rate = len(self._accepts) / elapsed
        self.size = min(self.size, max(MIN_WINDOW, math.ceil(2 * rate * self.rtt)))

    def _pass_on(self) -> None:
        """Close one place, then give the free places to the next waiters."""
        self.open -= 1
        while self._waiting and self.open < self.size:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                self.open += 1
