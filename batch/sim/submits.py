"""What a submit carries besides its body, read off the request (fal-protocol.md §1).

`platform_params` collects the platform headers and `fal_` query parameters a submit sent (the
simulator counts them and keeps them on the `JobRecord`); `start_timeout`, `low_priority`,
`no_retry` and `store_io` read the headers the model acts on; `queue_limit` parses
`fal_max_queue_length` and `json_body` the payload, each giving fal's 422 when they are bad.
`SubmitBucket` is the `max_submits_per_second` token bucket.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from aiohttp import web

from batch.sim.clock import Clock
from batch.sim.gateway import json_response

NO_RETRY_VALUES = frozenset({"1", "true", "yes"})  # fal's docs: 1, true or yes
STORE_IO_OFF = frozenset({"0", "false", "no"})
START_TIMEOUT_HEADERS = ("X-Fal-Request-Start-Timeout", "X-Fal-Request-Timeout")
MIN_START_TIMEOUT_S = 0.1
# What a submit may carry that is fal's, not the model's (common-parameters, submit, §1).
PLATFORM_HEADERS = (
    "X-Fal-Request-Timeout",
    "X-Fal-Request-Start-Timeout",
    "X-Fal-Runner-Hint",
    "X-Fal-Queue-Priority",
    "X-Fal-No-Retry",
    "X-Fal-Retry-Config",
    "X-Fal-Store-IO",
    "X-Fal-Object-Lifecycle-Preference",
    "X-App-Fal-Disable-Fallback",
    "X-Fal-Disable-Fallbacks",
)
PLATFORM_QUERY = ("fal_webhook", "fal_max_queue_length")


class SubmitBucket:
    """A token bucket for `max_submits_per_second`: the excess gets 429 with Retry-After.

    It refills by `clock` (the simulator's); a clock set back refills nothing meanwhile."""

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self.stamp = clock()

    def take(self) -> float:
        """0 when a submit may pass now, else the seconds until one may."""
        now = self.clock()
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def _query_error(name: str, msg: str) -> web.Response:
    item = {"loc": ["query", name], "msg": msg, "type": "int_parsing"}
    return json_response({"detail": [item]}, 422)


def _body_error(loc: list[Any], msg: str, kind: str) -> web.Response:
    return json_response({"detail": [{"loc": ["body", *loc], "msg": msg, "type": kind}]}, 422)


def platform_params(request: web.Request) -> dict[str, str]:
    """The platform headers (lower-case names) and `fal_` query parameters a submit carried."""
    sent = {
        name.lower(): request.headers[name] for name in PLATFORM_HEADERS if name in request.headers
    }
    sent.update({name: request.query[name] for name in PLATFORM_QUERY if name in request.query})
    return sent


def start_timeout(request: web.Request) -> float | None:
    """The start deadline in seconds; Start-Timeout wins over the deprecated header."""
    for name in START_TIMEOUT_HEADERS:
        try:
            value = float(request.headers.get(name, ""))
        except ValueError:
            continue
        if value > 0 and math.isfinite(value):
            return max(value, MIN_START_TIMEOUT_S)
    return None


def low_priority(request: web.Request) -> bool:
    """`X-Fal-Queue-Priority: low`."""
    return request.headers.get("X-Fal-Queue-Priority", "").strip().lower() == "low"


def no_retry(request: web.Request) -> bool:
    """`X-Fal-No-Retry` set: fal runs the request once."""
    return request.headers.get("X-Fal-No-Retry", "").strip().lower() in NO_RETRY_VALUES


def store_io(request: web.Request) -> bool:
    """Payload storage, on unless `X-Fal-Store-IO` turns it off."""
    return request.headers.get("X-Fal-Store-IO", "").strip().lower() not in STORE_IO_OFF


def queue_limit(request: web.Request) -> int | web.Response | None:
    """`fal_max_queue_length` (None when absent), or the 422 for one that is not an integer."""
    text = request.query.get("fal_max_queue_length")
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return _query_error("fal_max_queue_length", "Input should be a valid integer")


async def json_body(request: web.Request) -> dict[str, Any] | web.Response:
    """The submit's JSON object, or the 422 for a body that is not one."""
    try:
        payload = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        return _body_error([getattr(exc, "pos", 0)], "JSON decode error", "json_invalid")
    if not isinstance(payload, dict):
        return _body_error([], "Input should be a valid dictionary", "dict_type")
    return payload
