"""Admission: when may the next request be submitted?

Two separate tools, as in arq and aiolimiter: a counter of requests in flight (submitted and not
yet answered) against the concurrency limit, and a submit-rate limiter (asyncio-throttle). fal's
queue never refuses a submit for concurrency (a queue 429 comes only from
``fal_max_queue_length``), so by default no rate is set and submits go out as fast as slots free
up. On a 429 the whole admission slows down — to the rate fal was accepting, or by 15%, with
submits paused for Retry-After — and recovers with each accepted submit (AIMD); a configured
``rate`` is a ceiling.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from asyncio_throttle.throttler import Throttler

from batch.pipeline.window import SubmitWindow

_SMOOTH_RATE = 20.0  # up to this rate, pace one submit per 1/rate s instead of bursts
DECREASE = 0.85
INCREASE = 1.005
ACCEPT_WINDOW = 2.0  # seconds of accepted submits that say what the server takes


def make_throttler(rate: float) -> Throttler:
    """An asyncio-throttle limiter for `rate` calls per second, paced evenly."""
    return Throttler(*_throttle_shape(rate))


def _throttle_shape(rate: float) -> tuple[int, float]:
    """(submits per window, window seconds) for a sliding-window limiter that paces evenly."""
    if rate <= _SMOOTH_RATE:
        return 1, 1.0 / rate
    per_window = math.ceil(rate / _SMOOTH_RATE)
    return per_window, per_window / rate


class Admission:
    def __init__(self, concurrency: int, rate: float | None, *, min_rate: float = 0.2) -> None:
        """`rate`: at most this many submits per second; None: no ceiling (until a 429)."""
        self.concurrency = concurrency
        self.max_rate = math.inf if rate is None else rate
        self.min_rate = min(min_rate, self.max_rate)
        self.rate = self.max_rate
        self.in_flight = 0
        self.rate_limited = 0
        self._cooldown_until = 0.0
        self._accepted: deque[float] = deque()  # accept times within the last ACCEPT_WINDOW
        self._slots = asyncio.Semaphore(concurrency)
        self._throttle = make_throttler(rate or _SMOOTH_RATE)  # paced only below max
        self.window = SubmitWindow(concurrency)

    def __repr__(self) -> str:
        return (
            f"Admission(in_flight={self.in_flight}/{self.concurrency}, "
            f"rate={self.rate:.2f}/s, rate_limited={self.rate_limited})"
        )

    async def acquire_slot(self) -> None:
        """Wait for room under the concurrency limit, then take a slot."""
        await self._slots.acquire()
        self.in_flight += 1

    def has_room(self) -> bool:
        """True when `acquire_slot` would return at once."""
        return not self._slots.locked()

    def release_slot(self) -> None:
        self.in_flight -= 1
        self._slots.release()

    async def before_submit(self) -> None:
        """Wait for the submit rate (at once while no rate applies)."""
        if self.rate != math.inf:
            await self._throttle.acquire()  # type: ignore[no-untyped-call]

    def on_rate_limited(self, retry_after: float) -> None:
        """Decrease: to the rate the server was accepting, or by 15%, whichever is lower.

        429s that arrive together are one signal: the rate drops once per cool-down (the
        Retry-After, at least a few submit intervals).
        """
        self.rate_limited += 1
        now = time.monotonic()
        if now < self._cooldown_until:
            return
        target = self.rate * DECREASE
        observed = self._accepted_rate(now)
        if observed is not None:
            target = min(target, observed)
        if target == math.inf:  # no ceiling and too few accepts to measure: start at a pace
            target = _SMOOTH_RATE
        self._set_rate(max(self.min_rate, target))
        self._cooldown_until = now + max(retry_after, 3.0 / self.rate)

    def on_accepted(self) -> None:
        """Increase a little towards the configured rate."""
        now = time.monotonic()
        self._accepted.append(now)
        self._accepted_rate(now)  # drops old entries
        if self.rate < self.max_rate:
            self._set_rate(min(self.max_rate, self.rate * INCREASE + 0.01))

    def _accepted_rate(self, now: float) -> float | None:
        """Accepted submits per second over the last window, once the window has enough."""
        while self._accepted and self._accepted[0] < now - ACCEPT_WINDOW:
            self._accepted.popleft()
        if len(self._accepted) < 5:
            return None
        return len(self._accepted) / ACCEPT_WINDOW

    def _set_rate(self, rate: float) -> None:
        self.rate = rate
        self._throttle.rate_limit, self._throttle.period = _throttle_shape(rate)
