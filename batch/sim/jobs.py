"""One queued request: its record, its run-time state, its outcome and the bodies about it.

An `Outcome` is what the result endpoint replays: status code, body bytes and headers, plus the
`error`/`error_type` the status endpoint shows for a failure (fal-protocol.md §2, §3). Every
error outcome carries `X-Fal-Retryable`; the flat infrastructure ones also `X-Fal-Error-Type`
and `error_type` in the body (fal's request-errors page); a 422 has fal's model-error list.
An outcome with `retry` set is a failed attempt fal itself may run again (§10).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from batch.sim.faults import FaultRule

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"

# fal-protocol.md §3: infrastructure error types and the status the result replays.
ERROR_STATUS: dict[str, int] = {
    "request_timeout": 504,
    "startup_timeout": 504,
    "generation_timeout": 504,
    "runner_scheduling_failure": 503,
    "runner_connection_timeout": 503,
    "runner_disconnected": 503,
    "runner_connection_refused": 503,
    "runner_connection_error": 503,
    "runner_incomplete_response": 502,
    "runner_server_error": 500,
    "internal_error": 500,
    "client_disconnected": 499,
    "client_cancelled": 499,
    "bad_request": 400,
}
NOT_TRANSIENT = frozenset({"client_disconnected", "client_cancelled", "bad_request"})
# The error type a `fal_error` fault gives by status, when the rule names none.
TYPE_FOR_STATUS: dict[int, str] = {
    504: "request_timeout",
    503: "runner_scheduling_failure",
    502: "runner_incomplete_response",
    500: "internal_error",
    499: "client_disconnected",
    422: "validation_error",
}
ERROR_TEXT: dict[str, str] = {
    "startup_timeout": "Request timed out before a runner picked it up",
    "request_timeout": "Request timed out",
    "runner_disconnected": "The runner disconnected while processing the request",
    "client_cancelled": "Request was cancelled by the client",
    "internal_error": "Internal error while processing the request",
}
STORE_IO_LIMIT = 10 * 1024  # results this large are kept only 6 minutes without payload storage
VALIDATION_ERROR = "validation_error"  # error_type shown in the status of a 422 result
ERRORS_DOC = "https://docs.fal.ai/errors/#"


@dataclass(slots=True)
class Outcome:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    retry: bool = False  # a failed attempt fal's own server-side retries may run again


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def success(output: dict[str, Any]) -> Outcome:
    return Outcome(200, _dumps(output))


def retryable_text(value: bool) -> str:
    return "true" if value else "false"


def is_transient(error_type: str) -> bool:
    return error_type not in NOT_TRANSIENT


def error_text(error_type: str) -> str:
    return ERROR_TEXT.get(error_type, error_type.replace("_", " ").capitalize())


def infra_error(
    error_type: str,
    detail: str | None = None,
    *,
    status: int | None = None,
    retryable: bool | None = None,
) -> Outcome:
    """A flat `{"detail", "error_type"}` failure with the §3 status and `X-Fal-Error-Type`."""
    detail = detail or error_text(error_type)
    if retryable is None:
        retryable = is_transient(error_type)
    headers = {"X-Fal-Error-Type": error_type, "X-Fal-Retryable": retryable_text(retryable)}
    if error_type == "startup_timeout":
        headers["X-Fal-Request-Timeout-Type"] = "user"
    body = _dumps({"detail": detail, "error_type": error_type})
    code = status if status is not None else ERROR_STATUS.get(error_type, 500)
    return Outcome(code, body, headers, detail, error_type)


def detail_item(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": kind, "url": ERRORS_DOC + kind}


def unprocessable(detail: list[dict[str, Any]], *, retryable: bool = False) -> Outcome:
    """A 422 with fal's `{"detail": [{"loc", "msg", "type"}, ...]}` body."""
    error = "; ".join(
        f"{'.'.join(str(p) for p in item['loc'][1:]) or 'body'}: {item['msg']}" for item in detail
    )
    body = _dumps({"detail": detail})
    headers = {"X-Fal-Retryable": retryable_text(retryable)}
    return Outcome(422, body, headers, error, VALIDATION_ERROR)


def from_validation_error(exc: ValidationError) -> Outcome:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return unprocessable([detail_item(list(e["loc"]), e["msg"], e["type"]) for e in errors])


def from_fault(rule: FaultRule) -> Outcome:
    """The final outcome of a `job_error` job."""
    if rule.transient:
        return infra_error(rule.error_type or "runner_disconnected", retryable=rule.retryable)
    kind = rule.error_type or "value_error"
    item = detail_item([], "Simulated permanent model error", kind)
    return unprocessable([item], retryable=bool(rule.retryable))


def attempt_failure(error_type: str) -> Outcome:
    """A runner failure fal's server-side retries may run again (`server_retry`, timeouts)."""
    outcome = infra_error(error_type)
    outcome.retry = True
    return outcome


def error_answer(status: int, error_type: str | None, retryable: bool | None) -> Outcome:
    """What a `fal_error` fault answers: fal's own error, with both headers (errors docs)."""
    if error_type is None:
        error_type = TYPE_FOR_STATUS.get(
            status, "bad_request" if status < 500 else "internal_error"
        )
    if status == 422:
        item = detail_item([], "Simulated error answer", error_type)
        outcome = unprocessable([item], retryable=bool(retryable))
        outcome.headers["X-Fal-Error-Type"] = error_type
        return outcome
    if retryable is None:
        retryable = is_transient(error_type) and status >= 500
    return infra_error(error_type, status=status, retryable=retryable)


@dataclass(slots=True)
class JobRecord:
    """What an oracle needs about one job; kept after the job itself has expired."""

    request_id: str
    endpoint: str
    payload_hash: str
    priority: str
    submitted_at: float
    service_time: float
    started_at: float | None = None
    completed_at: float | None = None
    error_type: str | None = None
    result_status: int | None = None
    attempts: int = 0  # times a runner started it (fal's server-side retries add to this)
    gateway_request_ids: list[str] = field(default_factory=list)  # one per attempt
    cancel_requested: bool = False
    billed_units: str | None = None  # decimal string, as in X-Fal-Billable-Units; None: unbilled
    billed_usd: str | None = None
    sent: dict[str, str] = field(default_factory=dict)  # platform headers and fal_ query params

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, eq=False)
class Job:
    record: JobRecord
    root: str
    base_url: str
    payload: dict[str, Any] | None
    seed: int
    low: bool = False
    webhook: str | None = None
    fault: FaultRule | None = None
    retry_fault: FaultRule | None = None  # a `server_retry` rule: its attempts fail first
    no_retry: bool = False  # X-Fal-No-Retry: fal runs it once only
    store_io: bool = True  # X-Fal-Store-IO (payload storage; decides the result's retention)
    media_ttl_s: float | None = None  # lifetime of its output files (None: forever)
    start_deadline: float | None = None  # loop time by which a runner must have started it
    output_keys: list[str] = field(default_factory=list)  # its output files in the store
    expires_at: float = 0.0  # when its result is dropped (clock seconds)
    state: str = IN_QUEUE
    seq: int = 0
    removed: bool = False
    cancel_requested: bool = False
    images: int = 0
    outcome: Outcome | None = None
    timeout_handle: asyncio.TimerHandle | None = None
    task: asyncio.Task[Outcome] | None = None
    event: asyncio.Event | None = None

    @property
    def request_id(self) -> str:
        return self.record.request_id

    @property
    def gateway_request_id(self) -> str:
        """The id of the latest attempt (the request id until fal retries it)."""
        ids = self.record.gateway_request_ids
        return ids[-1] if ids else self.record.request_id


def urls(origin: str, root: str, request_id: str) -> dict[str, str]:
    base = f"{origin}/{root}/requests/{request_id}"
    return {"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"}


def _log(ts: float, level: str, message: str) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return {"message": message, "level": level, "source": "USER", "timestamp": stamp[:-6] + "Z"}


def logs(job: Job) -> list[dict[str, Any]]:
    """The job's log lines, derived from its record (nothing is stored per line)."""
    rec = job.record
    if rec.started_at is None:
        return []
    out = [_log(rec.started_at, "INFO", f"Processing request {rec.request_id}")]
    if rec.completed_at is not None and job.outcome is not None:
        if job.outcome.error is not None:
            out.append(_log(rec.completed_at, "ERROR", job.outcome.error))
        else:
            out.append(_log(rec.completed_at, "INFO", f"Generated {job.images} image(s)"))
    return out


def status_body(
    job: Job, origin: str, *, with_logs: bool, queue_position: int | None
) -> dict[str, Any]:
    """The status JSON of §2: queue_position for IN_QUEUE, logs and metrics otherwise."""
    body: dict[str, Any] = {"status": job.state, "request_id": job.request_id}
    body.update(urls(origin, job.root, job.request_id))
    if job.state == IN_QUEUE:
        body["queue_position"] = queue_position or 0
        return body
    body["logs"] = logs(job) if with_logs else None
    body["metrics"] = {}
    rec = job.record
    if job.state == COMPLETED and job.outcome is not None:
        if job.outcome.error_type is not None:
            body["error"] = job.outcome.error
            body["error_type"] = job.outcome.error_type
        elif rec.started_at is not None and rec.completed_at is not None:
            body["metrics"] = {"inference_time": round(rec.completed_at - rec.started_at, 6)}
    return body
