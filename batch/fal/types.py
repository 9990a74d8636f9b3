"""Typed values the client returns: a request handle, the three queue statuses, a result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestHandle:
    """Everything needed to find a queued request again (the ledger stores these fields)."""

    endpoint: str
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    # Requests ahead of this one when it was submitted (fal's submit answer), if known: a hint
    # for when to ask about it first, not part of its identity.
    queue_position: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class LogEntry:
    message: str
    timestamp: str | None = None
    level: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Queued:
    """IN_QUEUE. `position` is the number of requests ahead of this one."""

    position: int


@dataclass(frozen=True)
class InProgress:
    logs: tuple[LogEntry, ...] = ()


@dataclass(frozen=True)
class Completed:
    """COMPLETED. fal has no FAILED status: a failure is `error` + `error_type` here.

    `output` is the model's output when it came with the status (a webhook's payload); None
    means it is at the result endpoint.
    """

    logs: tuple[LogEntry, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    output: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or self.error_type is not None


Status = Queued | InProgress | Completed


@dataclass(frozen=True)
class Result:
    """A completed request's answer at the result endpoint.

    `output` is the model's output (the bare JSON body). `billable_units` is fal's
    ``X-Fal-Billable-Units`` header: the units this request was billed, in the endpoint's
    pricing unit (cost = units x the endpoint's unit price); None when fal sent none, or one
    that is not a finite number >= 0.
    """

    output: dict[str, Any]
    billable_units: float | None = None
