"""Waiting for a request to complete: adaptive polling, the status stream, or a webhook.

Polls are scheduled from what is known: a queued request's position and the service times
observed so far (fal's `metrics.inference_time`), so a request is asked about near the moment it
is likely to be done rather than at a fixed beat. All polls share one cap on status requests per
second. Transient status failures are retried here with back-off: status is idempotent.
In webhook mode the wait is `WebhookWaits.wait` (webhook_wait.py), with polling as its safety net.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from batch.fal import Completed, InProgress, QueueClient, Queued, RequestHandle, Status
from batch.fal.errors import RateLimitedError, TransientError
from batch.pipeline.admission import make_throttler
from batch.pipeline.policy import RetryPolicy

if TYPE_CHECKING:
    from batch.pipeline.webhook_wait import WebhookWaits

MIN_INTERVAL = 0.05
MAX_INTERVAL = 5.0
_STATUS_RETRIES = 6


class ServiceTimes:
    """A running estimate (EWMA) of how long a request runs once started."""

    def __init__(self, initial: float = 0.0, weight: float = 0.2) -> None:
        self.estimate = initial
        self.samples = 0
        self._weight = weight

    def record(self, seconds: float) -> None:
        if seconds <= 0:
            seconds = 0.0
        if self.samples == 0:
            self.estimate = seconds
        else:
            self.estimate += self._weight * (seconds - self.estimate)
        self.samples += 1


def next_poll(
    status: Status, service: ServiceTimes, running_for: float, slots: int, waited: float
) -> float:
    """Seconds until the next status request, from what this status says.

    `running_for` counts from when the request was first seen IN_PROGRESS, `waited` from its
    first status request. Until a service time has been observed, intervals grow with `waited`.
    """
    if service.samples == 0:
        return min(MAX_INTERVAL, max(MIN_INTERVAL, 0.1 + 0.25 * waited))
    expected = max(service.estimate, MIN_INTERVAL)
    if isinstance(status, Queued):
        # `position` requests are ahead; `slots` run at once; ours then runs ~`expected`.
        wait = (status.position // max(slots, 1) + 1) * expected
        return min(MAX_INTERVAL, max(MIN_INTERVAL, wait / 2))
    remaining = expected - running_for
    if remaining > MIN_INTERVAL:
        return min(MAX_INTERVAL, remaining)
    # Past the estimate: back off gently, so a slow request costs few extra polls.
    return min(MAX_INTERVAL, max(MIN_INTERVAL, 0.25 * expected, 0.1 * running_for))


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
        hooks: WebhookWaits | None = None,
    ) -> None:
        self.client = client
        self.policy = policy
        self.mode = mode
        self.slots = slots
        self.service = ServiceTimes()
        # A global cap on status requests, a safety valve well above what polling needs.
        self._budget = make_throttler(status_rate or max(100.0, 10.0 * slots))
        self._count = on_status_request
        self.hooks = hooks  # mode "webhook": the run's receiver

    async def wait(self, handle: RequestHandle) -> Completed:
        if self.mode == "webhook" and self.hooks is not None:
            return await self.hooks.wait(handle, self._poll, self.service)
        if self.mode == "stream":
            try:
                return await self._stream(handle)
            except TransientError:
                pass  # a dropped or refused stream: polling still finds the answer
        return await self._poll(handle)

    async def _stream(self, handle: RequestHandle) -> Completed:
        self._count()
        async for status in self.client.stream_status(handle):
            if isinstance(status, Completed):
                self._learn(status)
                return status
        raise TransientError("status stream ended without COMPLETED")

    async def _poll(self, handle: RequestHandle) -> Completed:
        first = time.monotonic()
        started: float | None = None
        while True:
            status = await self._status(handle)
            if isinstance(status, Completed):
                self._learn(status)
                return status
            now = time.monotonic()
            if isinstance(status, InProgress) and started is None:
                started = now
            running_for = now - started if started is not None else 0.0
            delay = next_poll(status, self.service, running_for, self.slots, now - first)
            await asyncio.sleep(delay)

    async def _status(self, handle: RequestHandle) -> Status:
        failures = 0
        while True:
            await self._budget.acquire()  # type: ignore[no-untyped-call]
            self._count()
            try:
                return await self.client.status(handle)
            except (TransientError, RateLimitedError) as exc:
                failures += 1
                if failures >= _STATUS_RETRIES:
                    raise
                retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
                await asyncio.sleep(self.policy.backoff(failures, retry_after))

    def _learn(self, status: Completed) -> None:
        inference = status.metrics.get("inference_time")
        if isinstance(inference, int | float) and not status.failed:
            self.service.record(float(inference))
