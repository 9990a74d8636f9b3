"""The fault plan: which requests the simulator answers badly, reproducibly from a seed.

A plan is a seed plus an ordered list of rules. Each request is classified by route (`submit`,
`status`, `stream`, `result`, `cancel`, `token`, `upload` (the CDN uploads and the signed PUT of
the initiate flow), `initiate`, `files`, `pricing`, `history` (the Platform API's request list),
`other`); the first rule that matches the route and fires wins. A rule fires with probability
`rate`, after letting the first `skip` matching requests through, and at most `max` times. Each
rule draws from its own generator seeded by (plan seed, rule index), so a run with the same
request sequence gets the same faults.

Fault kinds:

- `rate_limit`: 429, `Retry-After: <retry_after>`, flat body, error_type
  `concurrent_requests_limit`.
- `http_error`: `status` 500 (a fal error with `x-fal-request-id`) or 502/503/504 (an ingress
  error: nginx html and no `x-fal-request-id`, which fal_client treats as retryable).
- `drop_before`: close the connection without processing the request.
- `drop_after`: process the request (a submit is accepted and enqueued), then close the
  connection before the answer: the ambiguous case.
- `slow`: wait `delay` seconds, then process and answer normally.
- `fal_error`: an error answer from fal itself, as fal's error docs write it: `status` (any
  400-599), `X-Fal-Error-Type: <error_type>`, `X-Fal-Retryable: true|false` (`retryable`, by
  default true exactly for the transient types of the request-errors table) and
  `x-fal-request-id`; the body is flat `{"detail", "error_type"}`, or for a 422 the model-error
  list `{"detail": [{"loc": ["body"], "msg", "type": <error_type>, "url"}]}`. The request is not
  processed (a submit is not accepted). `error_type` defaults by status (503
  `runner_scheduling_failure`, 504 `request_timeout`, 502 `runner_incomplete_response`, 500
  `internal_error`, 422 `validation_error`, other 4xx `bad_request`).
- `job_error` (route `submit`): the accepted job fails after its service time, as its final
  outcome (fal's own retries are over); `transient: true` gives a flat 503
  `runner_disconnected` result (or `error_type`, with that type's status), `transient: false`
  a 422 whose detail type is `error_type` (default `value_error`). `retryable` overrides the
  `X-Fal-Retryable` header of the result (default: true for transient, false for a 422). The
  status shows `error` and `error_type`; the result carries both headers.
- `server_retry` (route `submit`): the accepted job's runner fails transiently (`error_type`,
  default `runner_disconnected` 503) in each of its first `failures` attempts, after the
  service time; fal puts it back IN_QUEUE (a new `gateway_request_id`, the same `request_id`)
  and runs it again, up to `SimConfig.max_server_attempts` attempts in all, then it ends in
  that error (unbilled). With `X-Fal-No-Retry` on the submit the first failure is final.
- `straggler` (route `submit`): the accepted job runs `factor` times its drawn service time
  (default 20): the slow tail of a live endpoint, which a client deadline cancels.
- `expire` (routes `status`, `stream`, `result`, `cancel`): a completed job is forgotten before
  this request is answered, so it answers 404 like a job past its retention.
- `cdn_down` (routes `upload`, `files`; turns on `SimConfig.cdn_host`): the CDN upload host is
  down. `status: 0` means its port refuses every connection (rate, skip and max do not apply);
  `status` 500/502/503/504 answers requests that reach the CDN host with that status (502-504
  as nginx html), the queue host's routes, including `/storage/upload/initiate`, are not
  touched: a client that falls back to the initiate flow gets through.

Webhook faults (route `webhook`: one pick per delivery, `webhook_bad_signature` per attempt; see
`webhooks.py`):

- `webhook_lost`: the delivery is never sent.
- `webhook_duplicate`: after a delivery succeeds it is sent once more (freshly signed).
- `webhook_delay`: the first attempt waits `delay` seconds.
- `webhook_reorder`: the delivery is held until a later one has been attempted (at most
  `delay` seconds), so it arrives out of completion order.
- `webhook_bad_signature`: this attempt carries a corrupted signature (a receiver answers 401
  and the schedule retries).
- `webhook_payload_error`: an `OK` body with `payload: null` and a `payload_error`.

YAML (`FaultPlan.from_yaml`):

    seed: 7
    rules:
      - {kind: rate_limit, route: submit, rate: 0.2, retry_after: 1}
      - {kind: http_error, route: status, status: 503, rate: 0.05}
      - {kind: drop_after, route: submit, max: 1}
      - {kind: job_error, transient: true, rate: 0.1}
      - {kind: fal_error, route: submit, status: 503, retryable: false, max: 1}
      - {kind: server_retry, failures: 2, rate: 0.1}
      - {kind: cdn_down, status: 0}
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

RouteKind = Literal[
    "submit",
    "status",
    "stream",
    "result",
    "cancel",
    "token",
    "upload",
    "initiate",
    "files",
    "pricing",
    "history",
    "other",
    "webhook",
]
ROUTE_KINDS: tuple[str, ...] = get_args(RouteKind)
FaultKind = Literal[
    "rate_limit",
    "http_error",
    "drop_before",
    "drop_after",
    "slow",
    "fal_error",
    "job_error",
    "server_retry",
    "straggler",
    "expire",
    "cdn_down",
    "webhook_lost",
    "webhook_duplicate",
    "webhook_delay",
    "webhook_reorder",
    "webhook_bad_signature",
    "webhook_payload_error",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

# Faults the middleware applies to any route, and the job faults with the routes they act on.
INGRESS_FAULTS = frozenset(
    {"rate_limit", "http_error", "fal_error", "drop_before", "drop_after", "slow"}
)
WEBHOOK_FAULTS = frozenset(
    {
        "webhook_lost",
        "webhook_duplicate",
        "webhook_delay",
        "webhook_reorder",
        "webhook_bad_signature",
        "webhook_payload_error",
    }
)
JOB_FAULT_ROUTES: dict[str, frozenset[str]] = {
    "job_error": frozenset({"submit"}),
    "server_retry": frozenset({"submit"}),
    "straggler": frozenset({"submit"}),
    "expire": frozenset({"status", "stream", "result", "cancel"}),
    "cdn_down": frozenset({"upload", "files"}),
    **{kind: frozenset({"webhook"}) for kind in WEBHOOK_FAULTS},
}
HTTP_ERROR_STATUSES = frozenset({500, 502, 503, 504})
CDN_DOWN_STATUSES = frozenset({0, *HTTP_ERROR_STATUSES})  # 0: connection refused


class FaultRule(BaseModel):
    """One rule of a `FaultPlan` (see the module docstring for the kinds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    route: RouteKind | Literal["any"] = "any"
    rate: Annotated[float, Field(ge=0, le=1)] = 1.0
    skip: Annotated[int, Field(ge=0)] = 0
    max: Annotated[int, Field(ge=0)] | None = None
    status: int = 503
    retry_after: Annotated[float, Field(ge=0)] = 1.0
    delay: Annotated[float, Field(ge=0)] = 1.0
    transient: bool = True
    error_type: str | None = None
    retryable: bool | None = None
    failures: Annotated[int, Field(ge=1)] = 1
    factor: Annotated[float, Field(gt=0)] = 20.0

    @model_validator(mode="after")
    def _check(self) -> FaultRule:
        if self.kind == "http_error" and self.status not in HTTP_ERROR_STATUSES:
            raise ValueError(f"http_error status must be one of {sorted(HTTP_ERROR_STATUSES)}")
        if self.kind == "cdn_down" and self.status not in CDN_DOWN_STATUSES:
            raise ValueError(f"cdn_down status must be one of {sorted(CDN_DOWN_STATUSES)}")
        if self.kind == "fal_error" and not 400 <= self.status <= 599:
            raise ValueError("fal_error status must be between 400 and 599")
        allowed = JOB_FAULT_ROUTES.get(self.kind)
        if allowed is not None and self.route != "any" and self.route not in allowed:
            raise ValueError(f"{self.kind} applies only to routes {sorted(allowed)}")
        return self

    def applies_to(self, route: str) -> bool:
        allowed = JOB_FAULT_ROUTES.get(self.kind)
        if allowed is not None and route not in allowed:
            return False
        return self.route in ("any", route)


class FaultPlan(BaseModel):
    """A seed and an ordered list of rules; the empty plan injects nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    rules: list[FaultRule] = Field(default_factory=list)

    @classmethod
    def from_yaml(cls, path: str | Path) -> FaultPlan:
        """Load a plan from a YAML file (an empty file is the empty plan)."""
        data: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return cls.model_validate(data or {})


class FaultInjector:
    """The run-time state of one plan: per-rule generators and match/fire counts."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._rngs = [random.Random(f"{plan.seed}:{i}") for i in range(len(plan.rules))]
        self._matches = [0] * len(plan.rules)
        self._fired = [0] * len(plan.rules)

    def __repr__(self) -> str:
        return f"FaultInjector(rules={len(self.plan.rules)}, fired={self._fired})"

    def pick(self, route: str, kinds: frozenset[str]) -> FaultRule | None:
        """The first rule of one of `kinds` that matches `route` and fires now, if any."""
        for i, rule in enumerate(self.plan.rules):
            if rule.kind not in kinds or not rule.applies_to(route):
                continue
            self._matches[i] += 1
            if self._matches[i] <= rule.skip:
                continue
            if rule.max is not None and self._fired[i] >= rule.max:
                continue
            if self._rngs[i].random() >= rule.rate:
                continue
            self._fired[i] += 1
            return rule
        return None
