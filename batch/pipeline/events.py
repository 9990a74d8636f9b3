"""What a run reports: counters, and progress sinks that observe them.

The pipeline calls `progress.update(stats)` after each change; it never asks whether stdout is a
TTY. The CLI picks the sink: a tqdm bar on a terminal, periodic plain log lines otherwise (cron),
or nothing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("batch.run")


@dataclass
class RunStats:
    total: int = 0  # items this run works on
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    retried: int = 0
    ambiguous: int = 0  # lost submit answers sent again (flagged possible_duplicate)
    recovered: int = 0  # lost submit answers found in fal's request history and re-attached
    status_requests: int = 0
    submits: int = 0
    rate_limited: int = 0
    wait_failures: int = 0  # waits that failed transiently (fal did not answer about a request)
    left: int = 0  # items this run left as they were for a later run (no answer, disk full)
    cancelled: int = 0  # requests cancelled at their deadline
    completed_after_cancel: int = 0  # of those, ones that completed anyway: their result used
    failed_by_kind: Counter[str] = field(default_factory=Counter)
    webhooks: Counter[str] = field(default_factory=Counter)  # wait: webhook (webhook_wait.py)
    started: float = field(default_factory=time.monotonic)

    def count_status_request(self) -> None:
        self.status_requests += 1

    @property
    def done(self) -> int:
        return self.completed + self.failed

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self) -> str:
        eta = self.eta()
        eta_s = f"{eta:.0f}s" if eta is not None else "?"
        return (
            f"{self.done}/{self.total} done: {self.completed} completed, {self.failed} failed, "
            f"{self.in_flight} in flight, {self.retried} retried; {self.rate():.1f} items/s; "
            f"eta {eta_s}" + (f"; {self.wait_failures} waits failed" if self.wait_failures else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "retried": self.retried,
            "possible_duplicates": self.ambiguous,
            "recovered": self.recovered,
            "submits": self.submits,
            "status_requests": self.status_requests,
            "rate_limited": self.rate_limited,
            "wait_failures": self.wait_failures,
            "left": self.left,
            "cancelled": self.cancelled,
            "completed_after_cancel": self.completed_after_cancel,
            "failed_by_kind": dict(self.failed_by_kind),
            "webhooks": dict(self.webhooks),
        }


class Progress(Protocol):
    def update(self, stats: RunStats) -> None: ...
    def close(self, stats: RunStats) -> None: ...


class NullProgress:
    def update(self, stats: RunStats) -> None:
        pass

    def close(self, stats: RunStats) -> None:
        pass


def event(name: str, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: under `--log-format json` the line carries these fields
    (`"event": name` first); plain lines show only the message."""
    return {"event": {"event": name, **fields}}


class LogProgress:
    """A plain line every `interval` seconds (text or JSON), for cron and pipes."""

    def __init__(self, interval: float = 10.0, json_lines: bool = False, job: str = "") -> None:
        self.interval = interval
        self.json_lines = json_lines
        self.job = job
        self._last = 0.0

    def update(self, stats: RunStats) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(stats)

    def close(self, stats: RunStats) -> None:
        self._emit(stats)

    def _emit(self, stats: RunStats) -> None:
        eta = stats.eta()
        fields = {
            "job": self.job,
            **stats.as_dict(),
            "items_per_second": round(stats.rate(), 3),
            "eta_seconds": None if eta is None else round(eta, 1),
        }
        job = f"{self.job}: " if self.job else ""
        log.info("progress: %s%s", job, stats.line(), extra=event("progress", **fields))


class TqdmProgress:
    """A terminal bar: completed + failed over total, with counts by state."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=0, unit="item", dynamic_ncols=True)
        self._last = 0.0

    def update(self, stats: RunStats) -> None:
        now = time.monotonic()
        if now - self._last < 0.2 and stats.done < stats.total:
            return  # redrawing costs more than a fast run's items
        self._last = now
        self._bar.total = stats.total
        self._bar.n = stats.done
        self._bar.set_postfix(
            ok=stats.completed, failed=stats.failed, flight=stats.in_flight, refresh=False
        )
        self._bar.refresh()

    def close(self, stats: RunStats) -> None:
        self.update(stats)
        self._bar.close()
