"""fal webhooks: signature verification (pure functions) and a receiver app (aiohttp).

fal POSTs a request's outcome to the `fal_webhook` URL given at submit (fal-protocol.md §6),
with four headers and an Ed25519 signature over

    request_id "\\n" user_id "\\n" timestamp "\\n" hex(sha256(raw body))

made with a key published as a JWKS (`https://rest.fal.ai/.well-known/jwks.json`). A delivery
is accepted only if, in this order:

1. all four `X-Fal-Webhook-*` headers are present and non-empty          else 401
2. the body is at most `max_body_bytes`                                   else 413
3. the timestamp is within ±`tolerance` seconds (300) of now (no replays)  else 401
4. the signature verifies under some key of the JWKS; on failure the JWKS is fetched again once
   (keys rotate), at most once per `refetch_interval`                      else 401
   (no JWKS could be fetched at all: 503, so fal tries again later)
5. the body is a JSON object whose `request_id` is the signed one          else 400
6. `accepts(request_id)`: the request belongs to the caller's job          else 401

Only then is `on_delivery(delivery)` awaited: True → 200 (also for a duplicate the caller
ignores: fal stops retrying), False → 503 (not now; fal retries on its schedule). A rejected
delivery never reaches the callbacks. The JWKS is fetched and cached by `batch.fal.jwks`.
This module knows nothing of batches or ledgers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from cryptography.exceptions import InvalidSignature

from batch.fal.jwks import JsonWebKey, JwksUnavailableError
from batch.fal.jwks import JwksCache as JwksCache  # re-exported (callers import it from here)
from batch.fal.types import Completed

REQUEST_ID = "x-fal-webhook-request-id"
USER_ID = "x-fal-webhook-user-id"
TIMESTAMP = "x-fal-webhook-timestamp"
SIGNATURE = "x-fal-webhook-signature"
HEADERS = (REQUEST_ID, USER_ID, TIMESTAMP, SIGNATURE)
TOLERANCE_S = 300.0
MAX_BODY_BYTES = 16 * 1024 * 1024
_TIMESTAMP_RE = re.compile(r"\d{1,15}")
_SIGNATURE_RE = re.compile(r"[0-9a-fA-F]{128}")

log = logging.getLogger("batch.webhooks")


class WebhookRejected(Exception):
    """A delivery that is not accepted: `status` is the answer, `reason` a short name."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class SignedHeaders:
    request_id: str
    user_id: str
    timestamp: str  # exactly as sent: it is part of the signed message
    signature: bytes


@dataclass(frozen=True)
class WebhookDelivery:
    """A verified delivery: fal's body, decoded."""

    request_id: str
    status: str  # "OK" or "ERROR"
    payload: Any  # the model's output (OK), its error body (ERROR), or None
    error: str | None = None
    payload_error: str | None = None
    gateway_request_id: str | None = None

    def completed(self) -> Completed:
        """The delivery as a COMPLETED status; `output` is set when the payload came with it."""
        if self.status == "OK" and isinstance(self.payload, dict):
            return Completed(output=self.payload)
        if self.status == "OK":
            return Completed()  # payload_error: the result is still at the queue endpoint
        error_type = self.payload.get("error_type") if isinstance(self.payload, dict) else None
        return Completed(
            error=self.error or "webhook: ERROR",
            error_type=error_type if isinstance(error_type, str) else None,
        )


class _OneLine(logging.Filter):
    """A malformed or oversized HTTP request (a scanner, a bad proxy) is answered 400 by aiohttp;
    it is logged as one line, not as the traceback aiohttp logs by default."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            first = str(exc.message).splitlines()[0][:200] if exc.message else type(exc).__name__
            record.msg, record.args = "webhook receiver: refused a malformed request: %s", (first,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _http_log() -> logging.Logger:
    """The receiver's HTTP server log, condensing malformed requests to one line."""
    http_log = logging.getLogger("batch.webhooks.http")
    if not any(isinstance(f, _OneLine) for f in http_log.filters):
        http_log.addFilter(_OneLine())
    return http_log


# --- pure functions ---------------------------------------------------------------------------


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal signs: the three header values and the body's sha256 (hex), one per line."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


def read_headers(headers: Mapping[str, str], *, now: float, tolerance: float) -> SignedHeaders:
    """Steps 1 and 3: the four headers, well formed, and a timestamp within the window."""
    lower = {k.lower(): v.strip() for k, v in headers.items()}
    values = [lower.get(name, "") for name in HEADERS]
    if not all(values):
        raise WebhookRejected(401, "missing_headers")
    request_id, user_id, timestamp, signature = values
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise WebhookRejected(401, "bad_timestamp")
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookRejected(401, "stale_timestamp")
    if not _SIGNATURE_RE.fullmatch(signature):
        raise WebhookRejected(401, "bad_signature")
    return SignedHeaders(request_id, user_id, timestamp, bytes.fromhex(signature))


def signing_key(
    signed: SignedHeaders, body: bytes, keys: Sequence[JsonWebKey]
) -> JsonWebKey | None:
    """Step 4: the key that verifies the signature, or None."""
    message = signed_message(signed.request_id, signed.user_id, signed.timestamp, body)
    for jwk in keys:
        try:
            jwk.key.verify(signed.signature, message)
        except InvalidSignature:
            continue
        return jwk
    return None


def parse_delivery(signed: SignedHeaders, body: bytes) -> WebhookDelivery:
    """Step 5: the body as a `WebhookDelivery` about the signed request id."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected(400, "bad_body") from None
    if not isinstance(data, dict):
        raise WebhookRejected(400, "bad_body")
    if data.get("request_id", signed.request_id) != signed.request_id:
        raise WebhookRejected(400, "request_id_mismatch")
    status = data.get("status")
    if status not in ("OK", "ERROR"):
        raise WebhookRejected(400, "bad_body")
    error, payload_error, gateway = (
        data.get("error"),
        data.get("payload_error"),
        data.get("gateway_request_id"),
    )
    return WebhookDelivery(
        request_id=signed.request_id,
        status=status,
        payload=data.get("payload"),
        error=str(error) if error is not None else None,
        payload_error=str(payload_error) if payload_error is not None else None,
        gateway_request_id=str(gateway) if gateway is not None else None,
    )


# --- the receiver -----------------------------------------------------------------------------

Accepts = Callable[[str], bool]
OnDelivery = Callable[[WebhookDelivery], Awaitable[bool]]


class WebhookReceiver:
    """An aiohttp app that verifies deliveries, then hands them to `on_delivery`.

        receiver = WebhookReceiver(JwksCache.from_url(session, jwks_url),
                                   accepts=lambda rid: rid in mine, on_delivery=handle)
        url = await receiver.start("127.0.0.1", 8787)   # ...
        await receiver.stop()

    `stats` counts `accepted`, `rejected:<reason>` and `not_now`.
    """

    def __init__(
        self,
        jwks: JwksCache,
        *,
        accepts: Accepts,
        on_delivery: OnDelivery,
        max_body_bytes: int = MAX_BODY_BYTES,
        tolerance: float = TOLERANCE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.jwks = jwks
        self.accepts = accepts
        self.on_delivery = on_delivery
        self.max_body_bytes = max_body_bytes
        self.tolerance = tolerance
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self.url: str | None = None
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"WebhookReceiver(url={self.url!r}, stats={dict(self.stats)})"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.add_routes([web.get("/healthz", self._health), web.post("/{tail:.*}", self.handle)])
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0: any free port); returns `http://host:port/`."""
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            logger=_http_log(),
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0][1]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        shown = "[::1]" if shown == "::" else (f"[{shown}]" if ":" in shown else shown)
        self.url = f"http://{shown}:{bound}/"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def handle(self, request: web.Request) -> web.Response:
        try:
            delivery = await self.verify(request)
        except WebhookRejected as exc:
            self.stats[f"rejected:{exc.reason}"] += 1
            return web.json_response({"detail": exc.reason}, status=exc.status)
        if not await self.on_delivery(delivery):
            self.stats["not_now"] += 1
            return web.json_response({"detail": "try again later"}, status=503)
        self.stats["accepted"] += 1
        return web.json_response({"ok": True})

    async def verify(self, request: web.Request) -> WebhookDelivery:
        """Steps 1-6 of the module docstring; raises WebhookRejected."""
        lower = {k.lower(): v for k, v in request.headers.items() if k.lower() in HEADERS}
        if not all(lower.get(name, "").strip() for name in HEADERS):
            raise WebhookRejected(401, "missing_headers")
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise WebhookRejected(413, "body_too_large")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise WebhookRejected(413, "body_too_large") from None
        signed = read_headers(lower, now=self.clock(), tolerance=self.tolerance)
        await self._check_signature(signed, body)
        delivery = parse_delivery(signed, body)
        if not self.accepts(delivery.request_id):
            raise WebhookRejected(401, "unknown_request")
        return delivery

    async def _check_signature(self, signed: SignedHeaders, body: bytes) -> None:
        try:
            generation, keys = await self.jwks.keys()
            if signing_key(signed, body, keys) is not None:
                return
            again = await self.jwks.refresh(generation)
        except JwksUnavailableError as exc:
            log.warning("webhook not verified: %s", exc)
            raise WebhookRejected(503, "jwks_unavailable") from None
        if again is None or signing_key(signed, body, again) is None:
            raise WebhookRejected(401, "bad_signature")
