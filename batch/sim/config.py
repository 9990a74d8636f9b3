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

from batch.schema import DEFAULT_ENDPOINT
from batch.sim.faults import FaultPlan

LatencyKind = Literal["fixed", "uniform", "lognormal"]
# Seconds between webhook attempts after the first: 10 retries over about 2 h, as fal documents
# (fal-protocol.md §6). `webhook_retry_scale` compresses the schedule for tests.
WEBHOOK_RETRY_DELAYS: tuple[float, ...] = (10, 30, 60, 120, 300, 600, 900, 1200, 1800, 2400)
DAY_S = 24 * 3600.0
CancelMode = Literal["signal", "abort"]
HistoryShows = Literal["ended", "sent"]


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


class Price(BaseModel):
    """One endpoint's price, as fal's pricing API states it: `unit_price` USD per `unit`.

    The unit decides how a billed request's units are counted from its output:
    `megapixels` (the output images' width x height / 10^6, summed), `image`/`images` (how
    many images), anything else (`request`, ...) one unit per request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_price: Annotated[float, Field(ge=0)]
    unit: str = "megapixels"
    currency: str = "USD"


# fal.ai/models/fal-ai/firered-image-edit/llms.txt: "$0.0325 per megapixels".
DEFAULT_PRICES: dict[str, Price] = {DEFAULT_ENDPOINT: Price(unit_price=0.0325, unit="megapixels")}


class SimConfig(BaseModel):
    """How the simulator behaves; every field has a default fit for tests, and the defaults
    behave like live fal (fal-protocol.md §11) unless said otherwise.

    `key` is the one API key the server accepts (`Authorization: Key <key>`, or
    `Bearer <key>`); it defaults to a fresh random value and is never shown in a repr, a
    validation error, a response or a log.

    Webhooks (`webhooks.py`): `user_id` is sent as `X-Fal-Webhook-User-Id`; attempt *n* + 1
    follows attempt *n* after `webhook_retry_delays[n] * webhook_retry_scale` seconds; each
    attempt may take `webhook_timeout_s`.

    The queue:

    - `capacity`: requests IN_PROGRESS at once (fal's per-account concurrency); the rest wait
      IN_QUEUE and are never refused for it (§9). The only queue 429s come from a submit's
      `fal_max_queue_length` and from `max_submits_per_second` (a simulated cap; None = none,
      like fal) or a `rate_limit` fault.
    - `cancel_mode`: what `PUT .../cancel` does to an IN_PROGRESS request. `signal` (fal's
      default: the app is only signalled) lets it run on: it completes, its result is served
      and it is billed. `abort` stops it: it completes with 499 `client_cancelled`, unbilled.
      An IN_QUEUE request is always removed (never runs, 499, unbilled).
    - `max_server_attempts`: how many times fal itself runs a request whose runner failed
      transiently (503/504/disconnect; the `server_retry` fault) before it ends in that error;
      between attempts the request is IN_QUEUE again with a new `gateway_request_id`.
      `X-Fal-No-Retry: 1|true|yes` on submit allows one attempt only.
    - `app_request_timeout_s`: the app's own `request_timeout` (fal's default 3600 s): an
      attempt running longer fails with 504 `request_timeout` (retried like a 504). None: none.
    - `apps`: the app ids fal knows (`owner/app`, or an endpoint id, whose app counts); a
      submit to any other app answers 404. None (the default) knows every app.
    - `validated_endpoints`: endpoints whose input the model checks with
      `batch.schema.EditInput` when it runs (a failure completes as 422). Any other endpoint
      passes its input through: an input that is a valid edit is rendered, anything else
      completes with `{"images": [], "input": <the input>}`.

    Retention (§3, media-expiration): a result stays fetchable `payload_retention_s` (30 days)
    after completion while payload storage is on (the default); a submit with
    `X-Fal-Store-IO: 0` keeps it `retention_s` (1 h), or `large_result_retention_s` (6 min) when
    the result is 10 KB or more. Output and uploaded files live `media_expiration_s` (fal's
    FAQ: at least 7 days; None: forever) unless the request's
    `X-Fal-Object-Lifecycle-Preference: {"expiration_duration_seconds": N|null}` says otherwise;
    an expired file answers 404 for good (fal: "permanently deleted"). With
    `media_renew_on_result` (not fal's behaviour; for tests of a client that re-fetches) each
    result fetch makes the request's expired outputs downloadable again for their lifetime.

    Money: every request that completes with 200 is billed at `prices[endpoint]` (none: 0 USD,
    units still counted in megapixels); the units go out as `X-Fal-Billable-Units` on its
    result (unless `send_billable_units` is off: a fal that sends no such header). 5xx and 499
    are never billed; a 422 from the model at run time is billed `validation_error_units` units
    (fal's FAQ: it "may still be charged"; default 0: not billed, as the pricing page says).
    `balance_usd` (None: unlimited) is what the account holds: billed requests deplete it and,
    once nothing is left, submits answer 403 "User is locked. Reason: Exhausted balance. ..."
    while status, stream, result and cancel still answer (`Simulator.billing.top_up`).

    Storage (§7): `signed_url_ttl_s` is how long an `upload/initiate` PUT URL works.
    `cdn_host` serves the CDN on a second port (`Simulator.cdn_url`), named as the token's
    `base_url`; a `cdn_down` fault turns it on.

    Request history (`GET /v1/models/requests/by-endpoint`, `history.py`): fal does not say
    when a request shows up there, so the defaults are the worst case for a client looking for
    a request whose submit answer it lost. `history_shows: ended` lists a request only once it
    has ended (completed, failed, cancelled, timed out); `sent` lists it from its submit on,
    with what is not yet known null. `history_lag_s` delays all of it: the history shows the
    requests as they were that many seconds ago (the simulator's clock). It keeps the newest
    `history_max_requests` requests, inputs and outputs included (they outlive result
    retention, so a client can still find them; lower it if payloads are large).

    TLS: `tls_names` (default: `localhost`, `127.0.0.1` and `host`) are the names the server
    certificate carries; a name the client does not connect by gives a hostname mismatch.
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    capacity: Annotated[int, Field(ge=1)] = 2
    latency: Latency = Latency(kind="fixed", a=0.05)
    seed: int = 0
    key: str = Field(default_factory=lambda: "sim-" + secrets.token_hex(16), repr=False)
    retention_s: Annotated[float, Field(gt=0)] = 3600.0
    large_result_retention_s: Annotated[float, Field(gt=0)] = 360.0
    payload_retention_s: Annotated[float, Field(gt=0)] = 30 * DAY_S
    ping_interval_s: Annotated[float, Field(gt=0)] = 15.0
    nsfw_word: str = "nsfw"
    faults: FaultPlan = Field(default_factory=FaultPlan)
    max_submits_per_second: Annotated[float, Field(gt=0)] | None = None
    tls: bool = False
    tls_names: tuple[str, ...] | None = None
    public_url: str | None = None
    token_ttl_s: Annotated[float, Field(gt=0)] = 30 * DAY_S
    signed_url_ttl_s: Annotated[float, Field(gt=0)] = 3600.0
    cdn_host: bool = False
    max_body_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    user_id: str = "sim-user"
    webhook_retry_delays: tuple[Annotated[float, Field(ge=0)], ...] = WEBHOOK_RETRY_DELAYS
    webhook_retry_scale: Annotated[float, Field(ge=0)] = 1.0
    webhook_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    cancel_mode: CancelMode = "signal"
    max_server_attempts: Annotated[int, Field(ge=1)] = 10
    app_request_timeout_s: Annotated[float, Field(gt=0)] | None = 3600.0
    apps: tuple[str, ...] | None = None
    validated_endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    media_expiration_s: Annotated[float, Field(gt=0)] | None = 7 * DAY_S
    media_renew_on_result: bool = False
    prices: dict[str, Price] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    validation_error_units: Annotated[float, Field(ge=0)] = 0.0
    send_billable_units: bool = True
    balance_usd: float | None = None
    history_shows: HistoryShows = "ended"
    history_lag_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    history_max_requests: Annotated[int, Field(ge=1)] = 100_000

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

    @model_validator(mode="after")
    def _cdn_for_faults(self) -> SimConfig:
        if any(rule.kind == "cdn_down" for rule in self.faults.rules):
            self.cdn_host = True
        return self
