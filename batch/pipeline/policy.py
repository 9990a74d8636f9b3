"""Retry policy as data plus one back-off formula (exponential, full jitter, capped).

A server's Retry-After overrides the formula, capped too. `NO_WAIT` turns every wait into zero
so tests never sleep for back-off.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # submits per item, the first included
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    download_attempts: int = 5

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before try number `attempt + 1` (attempt counts from 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        ceiling = min(self.backoff_max, self.backoff_min * 2 ** max(attempt - 1, 0))
        return random.uniform(0, ceiling)


NO_WAIT = RetryPolicy(backoff_min=0.0, backoff_max=0.0, retry_after_max=0.0)
