"""The parts of a job's settings: retries, the embedded simulator, webhooks; durations and
listen addresses as the settings write them. `JobError` is how every bad setting is reported."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from batch.errors import InvalidInputError
from batch.fal import DEFAULT_JWKS_URL
from batch.manifest import printable
from batch.manifest.pricing import SettingsModel

DEFAULT_PLATFORM_URL = "https://api.fal.ai"

_URL_RE = re.compile(r"https?://[^\s/?#]+(/\S*)?", re.IGNORECASE)
ENDPOINT_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+")
_NUMBER = r"\d+(\.\d+)?"
_LATENCY_RE = re.compile(rf"(fixed:)?{_NUMBER}|(uniform|lognormal):{_NUMBER},{_NUMBER}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `50m`, `2h`, `1h30m` or `1d`; ValueError otherwise."""
    cleaned = text.strip().lower().replace(" ", "")
    if not cleaned:
        raise ValueError("empty duration")
    total, pos = 0.0, 0
    for match in _DURATION.finditer(cleaned):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    if pos != len(cleaned) or total <= 0:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 50m, 2h, 1h30m)")
    return total


class JobError(InvalidInputError):
    """A job file or settings that cannot be used. ``errors``: ``file:line: field: reason``."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = [printable(e) for e in errors]  # keys and paths as the user wrote them
        super().__init__("\n".join(self.errors))


def duration_setting(value: Any) -> Any:
    """A setting's duration: seconds as given, or a text such as ``90m`` turned into seconds
    (a field validator's "before" step)."""
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise _fail(str(exc)) from None
    return value


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("job_setting", message)


class RetrySpec(SettingsModel):
    """Retries of transient failures: exponential back-off with full jitter, capped."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    attempts: int = Field(default=5, ge=1, le=1000)
    backoff_min: float = Field(default=0.5, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> RetrySpec:
        if self.backoff_max < self.backoff_min:
            raise _fail("backoff_max must not be less than backoff_min")
        return self


class SimSpec(SettingsModel):
    """The embedded simulator, for ``queue: local``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    capacity: int = Field(default=4, ge=1, le=10_000)
    latency: str = "uniform:0.2,0.8"  # fixed:S | uniform:LO,HI | lognormal:MEAN,SIGMA | S
    seed: int = Field(default=0, ge=-(2**63), le=2**63 - 1)

    @field_validator("latency")
    @classmethod
    def _latency(cls, value: str) -> str:
        if not _LATENCY_RE.fullmatch(value.strip()):
            why = "must be fixed:S, uniform:LO,HI, lognormal:MEAN,SIGMA or seconds"
            raise _fail(why)
        return value.strip()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``PORT`` or ``:PORT`` (host 127.0.0.1), ``[::1]:PORT``; port 0 = any."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


class WebhookSpec(SettingsModel):
    """Webhooks (``wait: webhook``, ``run --detach``): where fal posts results and how they
    are checked. ``public_url`` is what fal posts to (https, through a reverse proxy or tunnel
    to ``listen``); with ``queue: local`` it defaults to the receiver's own address.
    ``safety_net``: at least this many seconds without a webhook before an item is polled."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    public_url: str | None = None
    listen: str = "127.0.0.1:0"
    jwks_url: str = DEFAULT_JWKS_URL
    safety_net: float = Field(default=5.0, gt=0)

    @field_validator("public_url", "jwks_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not _URL_RE.fullmatch(value):
            raise _fail("must be an http(s) URL")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        try:
            host, port = parse_listen(value)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


class FalSpec(SettingsModel):
    """fal's platform settings (fal.ai/docs/documentation/model-apis/common-parameters): each
    unset one is fal's default. ``start_timeout`` and ``priority`` (top level) are the
    ``X-Fal-Request-Timeout`` and ``X-Fal-Queue-Priority`` headers."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    runner_hint: str | None = None  # X-Fal-Runner-Hint: route to a runner with this hint
    no_retry: bool = False  # X-Fal-No-Retry: fal does not retry a failed runner itself
    store_io: bool = True  # False: X-Fal-Store-IO: 0 (fal keeps no request payloads)
    media_expiration: float | None = Field(default=None, gt=0)  # seconds; output media life
    # fal_max_queue_length (429 past it)
    max_queue_length: int | None = Field(default=None, ge=1, le=2**63 - 1)
    ca_bundle: str | None = None  # CA file for https; default: the system's (SSL_CERT_FILE)
    # fal's Platform API (prices, request history). Unset: fal's own when the queue is fal's,
    # else the queue's own address (the simulator serves it; a proxy answers 404: none).
    platform_url: str | None = None
    # How long after its send a submit whose answer was lost is looked for in fal's request
    # history before it is sent again. Unset: from start_timeout and the observed service times.
    history_wait: float | None = Field(default=None, ge=0)

    @field_validator("media_expiration", "history_wait", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return duration_setting(value)

    @field_validator("platform_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not _URL_RE.fullmatch(value):
            raise _fail("must be an http(s) URL")
        return None if value is None else value.rstrip("/")

    def headers(self) -> dict[str, str]:
        """The platform headers every submit carries (none when all are fal's defaults)."""
        headers: dict[str, str] = {}
        if self.runner_hint:
            headers["X-Fal-Runner-Hint"] = self.runner_hint
        if self.no_retry:
            headers["X-Fal-No-Retry"] = "1"
        if not self.store_io:
            headers["X-Fal-Store-IO"] = "0"
        if self.media_expiration is not None:
            lifecycle = {"expiration_duration_seconds": int(self.media_expiration)}
            headers["X-Fal-Object-Lifecycle-Preference"] = json.dumps(lifecycle)
        return headers


class AccountSpec(SettingsModel):
    """One fal account (team) of a job run on several (`accounts:`): its name (recorded in each
    shard's ledger; never the key), the environment variable holding its key, and its limit.
    A sharded job spreads its shards over the accounts by their limits (`batch.job.layout`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    key_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    concurrency: int = Field(ge=1, le=10_000)


def _endpoint_list(value: list[str]) -> list[str]:
    if any(not ENDPOINT_RE.fullmatch(e) for e in value) or len(set(value)) < len(value):
        raise _fail("each must look like 'owner/app[/path]', each once")
    return value


def _account_list(value: list[AccountSpec]) -> list[AccountSpec]:
    if len({a.name for a in value}) < len(value):
        raise _fail("each account's name once (the ledger records it)")
    return value


# `endpoints:` (a comparison, at most 20) and `accounts:` (at most 100), each entry once.
Endpoints = Annotated[list[str], Field(max_length=20), AfterValidator(_endpoint_list)]
Accounts = Annotated[list[AccountSpec], Field(max_length=100), AfterValidator(_account_list)]
