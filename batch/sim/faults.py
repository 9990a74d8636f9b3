"""The fault plan: which requests the simulator answers badly, reproducibly from a seed.

A plan is a seed plus an ordered list of rules. Each request is classified by route (`submit`,
`status`, `stream`, `result`, `cancel`, `token`, `upload`, `files`, `other`); the first rule
that matches the route and fires wins. A rule fires with probability `rate`, after letting the
first `skip` matching requests through, and at most `max` times. Each rule draws from its own
generator seeded by (plan seed, rule index), so a run with the same request sequence gets the
same faults.

Fault kinds:

- `rate_limit`: 429, `Retry-After: <retry_after>`, flat body, error_type
  `concurrent_requests_limit`.
- `http_error`: `status` 500 (a fal error with `x-fal-request-id`) or 502/503/504 (an ingress
  error: nginx html and no `x-fal-request-id`, which fal_client treats as retryable).
- `drop_before`: close the connection without processing the request.
- `drop_after`: process the request (a submit is accepted and enqueued), then close the
  connection before the answer: the ambiguous case.
- `slow`: wait `delay` seconds, then process and answer normally.
- `job_error` (route `submit`): the accepted job fails after its service time; `transient: true`
  gives a flat 503 `runner_disconnected` result (or `error_type`), `transient: false` a 422.
- `expire` (routes `status`, `stream`, `result`, `cancel`): a completed job is forgotten before
  this request is answered, so it answers 404 like a job past its retention.

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
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

RouteKind = Literal[
    "submit", "status", "stream", "result", "cancel", "token", "upload", "files", "other", "webhook"
]
ROUTE_KINDS: tuple[str, ...] = get_args(RouteKind)
FaultKind = Literal[
    "rate_limit",
    "http_error",
    "drop_before",
    "drop_after",
    "slow",
    "job_error",
    "expire",
    "webhook_lost",
    "webhook_duplicate",
    "webhook_delay",
    "webhook_reorder",
    "webhook_bad_signature",
    "webhook_payload_error",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

# Faults the middleware applies to any route, and the job faults with the routes they act on.
INGRESS_FAULTS = frozenset({"rate_limit", "http_error", "drop_before", "drop_after", "slow"})
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
    "expire": frozenset({"status", "stream", "result", "cancel"}),
    **{kind: frozenset({"webhook"}) for kind in WEBHOOK_FAULTS},
}
HTTP_ERROR_STATUSES = frozenset({500, 502, 503, 504})


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

    @model_validator(mode="after")
    def _check(self) -> FaultRule:
        if self.kind == "http_error" and self.status not in HTTP_ERROR_STATUSES:
            raise ValueError(f"http_error status must be one of {sorted(HTTP_ERROR_STATUSES)}")
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
