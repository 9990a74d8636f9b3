"""Retries: the policy as data, one back-off formula, and the one loop that applies them.

Back-off is exponential with full jitter, capped; a server's Retry-After overrides the formula,
capped too. `retrying` is the only retry loop of the pipeline: status requests, uploads and
downloads all go through it, and it asks the error itself whether trying again can help
(`is_transient`), so a 404 or a corrupt download is not fetched again. `NO_WAIT` turns every
wait into zero so tests never sleep for back-off.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from batch.fal import RateLimitedError, TransientError
from batch.job import RetrySpec
from batch.outputs import DownloadError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # submits per item, the first included
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    download_attempts: int = 5
    status_attempts: int = 6  # status requests in a row that may fail before the wait gives up

    @classmethod
    def from_spec(cls, spec: RetrySpec) -> RetryPolicy:
        """The policy of a job's ``retries:`` settings."""
        return cls(
            attempts=spec.attempts, backoff_min=spec.backoff_min, backoff_max=spec.backoff_max
        )

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before try number `attempt + 1` (attempt counts from 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        ceiling = min(self.backoff_max, self.backoff_min * 2 ** max(attempt - 1, 0))
        return random.uniform(0, ceiling)


NO_WAIT = RetryPolicy(backoff_min=0.0, backoff_max=0.0, retry_after_max=0.0)


def is_transient(exc: BaseException) -> bool:
    """Whether the same call may succeed if made again: fal's transient and rate-limited
    answers, and downloads that failed for a passing reason."""
    if isinstance(exc, TransientError | RateLimitedError):
        return True
    return isinstance(exc, DownloadError) and exc.transient


async def retrying(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    attempts: int,
    on_retry: Callable[[BaseException], None] = lambda exc: None,
    sleep: Sleep = asyncio.sleep,
) -> T:
    """`call()`, made again after a back-off while it fails transiently, `attempts` times at
    most; the last failure, or the first permanent one, is raised."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as exc:
            if attempt >= attempts or not is_transient(exc):
                raise
            on_retry(exc)
            retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
            await sleep(policy.backoff(attempt, retry_after))
