"""Waiting for a request to complete: adaptive polling, the status stream, or a webhook.

Polls are scheduled from what is known: a queued request's position and the service times
observed so far (fal's `metrics.inference_time`), so a request is asked about near the moment it
is likely to be done rather than at a fixed beat. All polls share one cap on status requests per
second. Transient status failures are retried here with back-off: status is idempotent.
In webhook mode the wait is `WebhookWaits.wait` (webhook_wait.py), with polling as its safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from batch.fal import Completed, InProgress, QueueClient, Queued, RequestHandle, Status
from batch.fal.errors import TransientError
from batch.pipeline.admission import make_throttler
from batch.pipeline.policy import RetryPolicy, retrying
from batch.pipeline.race import first_of

MIN_INTERVAL = 0.05
MAX_INTERVAL = 5.0
SCOUTS = 3  # requests that poll closely while no service time is known yet
SCOUT_STEP = 0.1  # a scout's interval: 0.1 s + this share of its wait (lateness ≤ ~10%)
MAX_COLD_WAIT = 30.0  # the longest another request waits for the scouts before asking itself

Poll = Callable[[RequestHandle], Awaitable[Completed]]


class Hooks(Protocol):
    """Where webhooks arrive (`batch.pipeline.webhook_wait.WebhookWaits`)."""

    async def wait(
        self, handle: RequestHandle, poll: Poll, service: ServiceTimes | None = None
    ) -> Completed: ...


class ServiceTimes:
    """Running estimates (EWMA) of how long a request runs once started, and of its spread."""

    def __init__(self, weight: float = 0.1) -> None:
        self.estimate = 0.0
        self.spread = 0.0  # mean absolute deviation
        self.samples = 0
        self.longest = 0.0  # the longest observed
        self._weight = weight

    def record(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.longest = max(self.longest, seconds)
        if self.samples == 0:
            self.estimate = seconds
        else:
            error = seconds - self.estimate
            self.estimate += self._weight * error
            self.spread += self._weight * (abs(error) - self.spread)
        self.samples += 1


def first_poll(service: ServiceTimes, position: int | None, slots: int) -> float:
    """Seconds between a submit and its first status request: when it is likely done, from
    the queue position the submit answered (the queue ahead keeps fal's slots busy meanwhile,
    so waiting costs no throughput)."""
    if service.samples == 0:
        return MIN_INTERVAL
    if position is None:
        return _clamp(service.estimate)
    return next_poll(Queued(position), service, 0.0, slots, 0.0)


def next_poll(
    status: Status, service: ServiceTimes, running_for: float, slots: int, waited: float
) -> float:
    """Seconds until the next status request, from what this status says.

    Aim at the moment the request is likely done: a queued one after the requests ahead of
    it have run (`slots` at a time) plus its own service time; a running one at the typical
    service time plus spread. `running_for` counts from when it was first seen IN_PROGRESS,
    `waited` from its first status request. Until a service time has been observed, intervals
    grow with `waited`.
    """
    if service.samples == 0:
        return _clamp(0.1 + 0.25 * waited)
    expected = max(service.estimate, MIN_INTERVAL)
    likely = expected + service.spread
    if isinstance(status, Queued):
        return _clamp((status.position / max(slots, 1)) * expected + likely)
    if running_for == 0.0:
        # Just seen running: it may have started any time since the last poll.
        return _clamp(0.6 * likely)
    remaining = likely - running_for
    if remaining > MIN_INTERVAL:
        return _clamp(remaining)
    # Past the likely end: a slow one; ask again at a modest pace.
    return _clamp(max(0.35 * expected, 0.1 * running_for))


def eager_poll(service: ServiceTimes, elapsed: float) -> float:
    """Seconds until the next status request when nothing waits in fal's queue behind this
    request (`queue_ahead: 0`): its slot idles until its end is noticed, so polls start a
    little before the likely end and follow closely, thinning out for a straggler.
    `elapsed`: since it was submitted (it started then: nothing was ahead of it)."""
    estimate, spread = max(service.estimate, MIN_INTERVAL), service.spread
    start = estimate - 0.3 * spread
    if elapsed < start:
        return _clamp(start - elapsed)
    step = max(0.5 * spread, 0.05 * estimate, 0.1 * (elapsed - estimate - 2 * spread))
    return _clamp(step)


def tail_start(service: ServiceTimes) -> float:
    """Seconds after a submit at which a request with nothing ahead of it (it starts at once)
    may end: its service time, less twice the spread."""
    return max(0.0, service.estimate - 2 * service.spread)


def _clamp(seconds: float) -> float:
    return min(MAX_INTERVAL, max(MIN_INTERVAL, seconds))


class Waiter:
    """Waits for Completed by polling or streaming; counts status requests."""

    def __init__(
        self,
        client: QueueClient,
        policy: RetryPolicy,
        *,
        mode: str = "poll",
        slots: int = 2,
        status_rate: float | None = None,
        on_status_request: Callable[[], None] = lambda: None,
        hooks: Hooks | None = None,
        eager: bool = False,
    ) -> None:
        self.client = client
        self.eager = eager  # no queue ahead at fal: a late look leaves a slot idle
        self.policy = policy
        self.mode = mode
        self.slots = slots
        self.service = ServiceTimes()
        # Before the first service time is known (a cold start), only a few requests (scouts)
        # poll closely; the others wait for what the scouts learn (`_learned`: fal's
        # inference time, or the time a scout was seen running), asking themselves only every
        # `MAX_COLD_WAIT`. A cold start of thousands of requests then costs few polls.
        self._scouts: set[str] = set()
        self._learned = asyncio.Event()
        self._vacancy = asyncio.Event()  # set when a scout ends having learned nothing
        # A global cap on status requests, a safety valve well above what polling needs.
        self._budget = make_throttler(status_rate or max(100.0, 10.0 * slots))
        self._count = on_status_request
        self.hooks = hooks  # mode "webhook": the run's receiver

    async def wait(self, handle: RequestHandle, *, fresh: bool = False) -> Completed:
        """Wait until fal says COMPLETED. `fresh`: submitted just now (not re-attached)."""
        if self.mode == "webhook" and self.hooks is not None:
            completed = await self.hooks.wait(handle, self._poll, self.service)
            if completed.failed:
                # An ERROR delivery is acted on only once the queue confirms the request ended:
                # a signed delivery can still be wrong (or early), and acting on it too soon
                # could send an item again while fal still runs it.
                completed = await self._poll(handle)
            return completed
        if self.mode == "stream" or self._follows_tail(handle, fresh):
            if self.mode != "stream":
                await asyncio.sleep(tail_start(self.service))
            try:
                return await self._stream(handle)
            except TransientError:
                pass  # a dropped or refused stream: polling still finds the answer
            fresh = False
        return await self._poll(handle, fresh=fresh)

    def _follows_tail(self, handle: RequestHandle, fresh: bool) -> bool:
        """Whether a polled request follows its last stretch on fal's status stream: when
        nothing queues ahead at fal (`eager`) its slot idles until the end is noticed, and
        polls notice a spread-out end either late or often. There are then at most
        `concurrency` such requests, so holding a stream each near their end is cheap: one
        status request, and the end is seen at once."""
        return (
            self.mode == "poll"
            and self.eager
            and fresh
            and self.service.samples > 0
            and not handle.queue_position
        )

    async def _stream(self, handle: RequestHandle) -> Completed:
        self._count()
        async for status in self.client.stream_status(handle):
            if isinstance(status, Completed):
                self._learn(status)
                return status
        raise TransientError("status stream ended without COMPLETED")

    async def _poll(self, handle: RequestHandle, *, fresh: bool = False) -> Completed:
        """Poll until COMPLETED. `fresh`: just submitted, so the first look can wait."""
        began = time.monotonic()
        try:
            if fresh:
                await self._first_wait(handle, began)
            first = time.monotonic()
            started: float | None = None
            streamed = False  # with nothing queued ahead (`eager`): followed on the stream
            while True:
                status = await self._status(handle)
                if isinstance(status, Completed):
                    seen = time.monotonic() - (started if started is not None else began)
                    self._learn(status, seen)
                    return status
                now = time.monotonic()
                if isinstance(status, InProgress) and started is None:
                    started = now
                elif isinstance(status, Queued):
                    started = None  # fal retries requests itself: a running one may queue again
                tail = self.service.samples and self.eager and isinstance(status, InProgress)
                if tail and self.mode == "poll" and not streamed:  # its last stretch: the stream
                    streamed = True
                    await asyncio.sleep(max(0.0, tail_start(self.service) - (now - began)))
                    with contextlib.suppress(TransientError):
                        return await self._stream(handle)
                elif tail:
                    await asyncio.sleep(eager_poll(self.service, now - began))
                elif self.service.samples:
                    running_for = now - started if started is not None else 0.0
                    delay = next_poll(status, self.service, running_for, self.slots, now - first)
                    await asyncio.sleep(delay)
                elif self._scout(handle):
                    await asyncio.sleep(_clamp(0.1 + SCOUT_STEP * (now - first)))
                else:
                    await self._cold_wait(handle, began)
        finally:
            self._leave(handle)

    async def _first_wait(self, handle: RequestHandle, began: float) -> None:
        """Before the first status request of a request just submitted."""
        if self.service.samples and self.eager and not handle.queue_position:
            await asyncio.sleep(eager_poll(self.service, 0.0))
        elif self.service.samples or self._scout(handle):
            await asyncio.sleep(first_poll(self.service, handle.queue_position, self.slots))
        else:
            await self._cold_wait(handle, began)

    def _leave(self, handle: RequestHandle) -> None:
        """A wait is over; a scout that taught nothing (its request failed) makes room for
        another, woken from `_cold_wait`."""
        if handle.request_id in self._scouts:
            self._scouts.discard(handle.request_id)
            if not self._learned.is_set():
                self._vacancy.set()
                self._vacancy = asyncio.Event()

    def _scout(self, handle: RequestHandle) -> bool:
        """Whether this request polls closely while no service time is known: the first few."""
        if handle.request_id in self._scouts:
            return True
        if len(self._scouts) < SCOUTS:
            self._scouts.add(handle.request_id)
            return True
        return False

    async def _cold_wait(self, handle: RequestHandle, began: float) -> None:
        """Wait until a scout learns a service time (at most `MAX_COLD_WAIT`), then until this
        request is likely done, counted from when its wait began."""
        deadline = time.monotonic() + MAX_COLD_WAIT
        while not self._learned.is_set():
            if self._scout(handle):
                return  # a scout ended without a service time (it failed): this one asks
            left = deadline - time.monotonic()
            if left <= 0 or not await first_of(
                self._learned.wait(), self._vacancy.wait(), timeout=left
            ):
                return
        likely = self.service.estimate + self.service.spread
        ahead = (handle.queue_position or 0) / max(self.slots, 1) * self.service.estimate
        left = ahead + likely - (time.monotonic() - began)
        if left > 0:
            await asyncio.sleep(min(left, MAX_INTERVAL))

    async def _status(self, handle: RequestHandle) -> Status:
        """One status answer; status is idempotent, so transient failures are asked again."""

        async def once() -> Status:
            await self._budget.acquire()  # type: ignore[no-untyped-call]
            self._count()
            return await self.client.status(handle)

        return await retrying(once, self.policy, attempts=self.policy.status_attempts)

    def _learn(self, status: Completed, seen: float | None = None) -> None:
        """A service time: fal's `inference_time`; before any, a poller's own observation
        (`seen`: from first seeing it running, or from the start of its wait), so that a cold
        start learns even from an app that sends no metrics."""
        if status.failed:
            return
        inference = inference_time(status)
        if inference is not None:
            self.service.record(inference)
        elif seen is not None and not self.service.samples:
            self.service.record(seen)
        else:
            return
        self._learned.set()


def inference_time(status: Completed) -> float | None:
    value = status.metrics.get("inference_time")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
