"""What the simulator saw: requests and responses per route, submits per payload, faults.

Tests read these to prove properties such as "no item was submitted twice": every accepted
submit is counted under `payload_hash(endpoint_id, payload)`, which is the sha256 of the
canonical JSON of `{"endpoint": endpoint_id, "payload": payload}`.

A response that never reached the client (a dropped connection) is counted under status 0.

Webhook deliveries are counted by event (`deliveries` started, `attempts`, `delivered`,
`failed_attempts`, `given_up`, `lost`, `duplicates_sent`, `bad_signatures`, `payload_errors`),
by the receiver's answer (status 0: no answer) and, per request id, the 2xx-acknowledged ones.

Money (`billing.py`): `billed_requests`, `billed_units` and `billed_usd` (exact `Decimal`s;
strings in `snapshot()`), per endpoint, and per payload hash the billed successes, so
`paid_twice` is how many distinct payloads were paid for more than once.

What submits were sent with: `submit_params` counts `name=value` for every platform header
(`x-fal-request-timeout`, `x-fal-runner-hint`, ...) and `fal_` query parameter of every submit
that reached the queue (accepted or not); `sent(name, value)` reads it. Each accepted job's own
values are in its `JobRecord.sent`. `server_retries` counts the times fal put a running request
back in the queue; `cancel_signals` the cancels of a running request that only signalled it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from decimal import Decimal
from typing import Any

DROPPED = 0  # the "status" of a response the client never got


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def payload_hash(endpoint_id: str, payload: Any) -> str:
    """sha256 hex of the canonical JSON of `{"endpoint": endpoint_id, "payload": payload}`."""
    text = canonical_json({"endpoint": endpoint_id, "payload": payload})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Counters:
    """Plain counts, readable from Python (`snapshot()` and accessors) and at /_sim/counters."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.responses: dict[str, Counter[int]] = {}
        self.submits: Counter[str] = Counter()
        self.status_calls: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.faults_by_route: Counter[str] = Counter()
        self.webhooks: Counter[str] = Counter()
        self.webhook_responses: Counter[int] = Counter()
        self.webhooks_delivered: Counter[str] = Counter()
        self.webhooks_lost: list[str] = []
        self.billed_requests = 0
        self.billed_units = Decimal(0)
        self.billed_usd = Decimal(0)
        self.billed_usd_by_endpoint: dict[str, Decimal] = {}
        self.billed_successes: Counter[str] = Counter()  # payload hash -> billed 200s
        self.submit_params: Counter[str] = Counter()  # "name=value" of what submits carried
        self.server_retries = 0
        self.cancel_signals = 0

    def __repr__(self) -> str:
        reqs = ", ".join(f"{k}={v}" for k, v in sorted(self.requests.items()))
        return (
            f"Counters(requests: {reqs or 'none'}; accepted submits={self.accepted_submits}; "
            f"faults={dict(self.faults)})"
        )

    # --- recording ------------------------------------------------------------------------

    def record_request(self, route: str) -> None:
        self.requests[route] += 1

    def record_response(self, route: str, status: int) -> None:
        self.responses.setdefault(route, Counter())[status] += 1

    def record_submit(self, digest: str) -> None:
        self.submits[digest] += 1

    def record_status_call(self, request_id: str) -> None:
        self.status_calls[request_id] += 1

    def record_fault(self, kind: str, route: str) -> None:
        self.faults[kind] += 1
        self.faults_by_route[f"{route}:{kind}"] += 1

    def record_webhook(self, event: str, request_id: str | None = None) -> None:
        self.webhooks[event] += 1
        if event == "delivered" and request_id is not None:
            self.webhooks_delivered[request_id] += 1
        elif event == "lost" and request_id is not None:
            self.webhooks_lost.append(request_id)

    def record_webhook_response(self, status: int) -> None:
        self.webhook_responses[status] += 1

    def record_billing(
        self, endpoint: str, digest: str, units: Decimal, usd: Decimal, *, success: bool
    ) -> None:
        self.billed_requests += 1
        self.billed_units += units
        self.billed_usd += usd
        self.billed_usd_by_endpoint[endpoint] = (
            self.billed_usd_by_endpoint.get(endpoint, Decimal(0)) + usd
        )
        if success:
            self.billed_successes[digest] += 1

    def record_submit_params(self, params: dict[str, str]) -> None:
        for name, value in params.items():
            self.submit_params[f"{name.lower()}={value}"] += 1

    # --- reading --------------------------------------------------------------------------

    @property
    def accepted_submits(self) -> int:
        return sum(self.submits.values())

    def requests_for(self, route: str) -> int:
        return self.requests[route]

    def responses_for(self, route: str, status: int | None = None) -> int:
        """Responses on `route` with `status` (all statuses when None; 0 = dropped)."""
        counts = self.responses.get(route, Counter())
        return sum(counts.values()) if status is None else counts[status]

    def submits_for(self, endpoint_id: str, payload: Any) -> int:
        """How many submits of exactly this payload to this endpoint were accepted."""
        return self.submits[payload_hash(endpoint_id, payload)]

    def duplicate_submits(self) -> dict[str, int]:
        """Payload hashes accepted more than once, with their counts."""
        return {digest: n for digest, n in self.submits.items() if n > 1}

    def status_calls_for(self, request_id: str) -> int:
        return self.status_calls[request_id]

    @property
    def paid_twice(self) -> int:
        """Distinct payloads (endpoint + canonical input) with more than one billed success."""
        return sum(1 for n in self.billed_successes.values() if n > 1)

    def billed_for(self, endpoint_id: str, payload: Any) -> int:
        """How many billed successes this exact payload to this endpoint had."""
        return self.billed_successes[payload_hash(endpoint_id, payload)]

    def sent(self, name: str, value: str | None = None) -> int:
        """Submits that carried platform header / query parameter `name` (with `value`)."""
        key = name.lower() + "="
        if value is not None:
            return self.submit_params[key + value]
        return sum(n for k, n in self.submit_params.items() if k.startswith(key))

    def faults_injected(self, kind: str | None = None, route: str | None = None) -> int:
        if kind is None and route is None:
            return sum(self.faults.values())
        if route is None:
            return self.faults[kind or ""]
        return sum(
            n
            for key, n in self.faults_by_route.items()
            if key.startswith(f"{route}:") and (kind is None or key == f"{route}:{kind}")
        )

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of every count (status codes become string keys)."""
        return {
            "requests": dict(self.requests),
            "responses": {
                route: {str(code): n for code, n in sorted(counts.items())}
                for route, counts in self.responses.items()
            },
            "accepted_submits": self.accepted_submits,
            "submits_by_payload": dict(self.submits),
            "duplicate_submits": self.duplicate_submits(),
            "status_calls": dict(self.status_calls),
            "faults": dict(self.faults),
            "faults_by_route": dict(self.faults_by_route),
            "webhooks": dict(self.webhooks),
            "webhook_responses": {str(k): n for k, n in sorted(self.webhook_responses.items())},
            "webhooks_delivered": dict(self.webhooks_delivered),
            "webhooks_lost": list(self.webhooks_lost),
            "billed_requests": self.billed_requests,
            "billed_units": decimal_text(self.billed_units),
            "billed_usd": decimal_text(self.billed_usd),
            "billed_usd_by_endpoint": {
                k: decimal_text(v) for k, v in sorted(self.billed_usd_by_endpoint.items())
            },
            "billed_successes": dict(self.billed_successes),
            "paid_twice": self.paid_twice,
            "submit_params": dict(self.submit_params),
            "server_retries": self.server_retries,
            "cancel_signals": self.cancel_signals,
        }


def decimal_text(value: Decimal) -> str:
    """`Decimal("1.048576")` -> "1.048576", `Decimal("2.50")` -> "2.5"; never exponent form."""
    text = f"{value.normalize():f}"
    return "0" if text == "-0" else text
