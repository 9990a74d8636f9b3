"""The simulator's settings: `SimConfig`, and `Latency`, the model's service-time distribution.

Everything random in the simulator is drawn from generators seeded by `SimConfig.seed`, so two
runs that submit the same jobs in the same order get the same service times and seeds.
"""

from __future__ import annotations

import math
import random
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from batch.sim.faults import FaultPlan

LatencyKind = Literal["fixed", "uniform", "lognormal"]
# Seconds between webhook attempts after the first: 10 retries over about 2 h, as fal documents
# (fal-protocol.md §6). `webhook_retry_scale` compresses the schedule for tests.
WEBHOOK_RETRY_DELAYS: tuple[float, ...] = (10, 30, 60, 120, 300, 600, 900, 1200, 1800, 2400)


class Latency(BaseModel):
    """A service-time distribution in seconds, written `kind:a[,b]`.

    - `fixed:0.5`: always 0.5 s.
    - `uniform:0.1,0.9`: uniform between 0.1 and 0.9 s.
    - `lognormal:0.5,0.6`: lognormal whose *mean* is 0.5 s, with sigma 0.6 for the underlying
      normal (so mu = ln(0.5) - 0.6²/2).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: LatencyKind = "fixed"
    a: Annotated[float, Field(ge=0)] = 0.0
    b: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _check(self) -> Latency:
        if self.kind == "uniform" and self.b < self.a:
            raise ValueError("uniform latency needs low <= high")
        if self.kind == "lognormal" and self.a <= 0:
            raise ValueError("lognormal latency needs a mean > 0")
        return self

    @classmethod
    def parse(cls, text: str) -> Latency:
        """`"fixed:0.5"`, `"uniform:0.1,0.9"`, `"lognormal:0.5,0.6"`; a bare number means fixed."""
        kind, sep, args = text.strip().partition(":")
        if not sep:
            kind, args = "fixed", kind
        try:
            numbers = [float(x) for x in args.split(",") if x.strip()]
        except ValueError as exc:
            raise ValueError(f"invalid latency {text!r}: {exc}") from exc
        wanted = 1 if kind == "fixed" else 2
        if len(numbers) != wanted:
            raise ValueError(f"invalid latency {text!r}: {kind} takes {wanted} number(s)")
        return cls.model_validate({"kind": kind, "a": numbers[0], "b": numbers[-1]})

    def draw(self, rng: random.Random) -> float:
        """One service time in seconds."""
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        mu = math.log(self.a) - self.b**2 / 2
        return rng.lognormvariate(mu, self.b)

    def __str__(self) -> str:
        return f"fixed:{self.a:g}" if self.kind == "fixed" else f"{self.kind}:{self.a:g},{self.b:g}"


class SimConfig(BaseModel):
    """How the simulator behaves; every field has a default fit for tests.

    `key` is the one API key the server accepts (`Authorization: Key <key>`, or
    `Bearer <key>`); it defaults to a fresh random value and is never shown in a repr, a
    validation error, a response or a log.

    Webhooks (`webhooks.py`): `user_id` is sent as `X-Fal-Webhook-User-Id`; attempt *n* + 1
    follows attempt *n* after `webhook_retry_delays[n] * webhook_retry_scale` seconds; each
    attempt may take `webhook_timeout_s`.
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    capacity: Annotated[int, Field(ge=1)] = 2
    latency: Latency = Latency(kind="fixed", a=0.05)
    seed: int = 0
    key: str = Field(default_factory=lambda: "sim-" + secrets.token_hex(16), repr=False)
    retention_s: Annotated[float, Field(gt=0)] = 3600.0
    ping_interval_s: Annotated[float, Field(gt=0)] = 15.0
    nsfw_word: str = "nsfw"
    faults: FaultPlan = Field(default_factory=FaultPlan)
    max_submits_per_second: Annotated[float, Field(gt=0)] | None = None
    tls: bool = False
    public_url: str | None = None
    token_ttl_s: Annotated[float, Field(gt=0)] = 30 * 24 * 3600.0
    max_body_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    user_id: str = "sim-user"
    webhook_retry_delays: tuple[Annotated[float, Field(ge=0)], ...] = WEBHOOK_RETRY_DELAYS
    webhook_retry_scale: Annotated[float, Field(ge=0)] = 1.0
    webhook_timeout_s: Annotated[float, Field(gt=0)] = 15.0

    @field_validator("latency", mode="before")
    @classmethod
    def _parse_latency(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        return Latency.parse(value) if isinstance(value, str) else value

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        if not value or value != value.strip() or any(c in value for c in "\r\n"):
            raise ValueError("key must be a non-empty string without surrounding whitespace")
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_url(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None
