"""Signed webhook delivery, as fal does it (fal-protocol.md §6), and the key's JWKS.

When a job submitted with `?fal_webhook=<url>` completes, `WebhookSender.deliver` POSTs its
outcome there as JSON:

    {"request_id", "gateway_request_id", "status": "OK", "payload": <the model's output>}
    {"request_id", "gateway_request_id", "status": "ERROR",
     "error": "Invalid status code: <code>", "payload": <the error body>}
    {"request_id", "gateway_request_id", "status": "OK", "payload": null, "payload_error": "..."}

with the four `X-Fal-Webhook-*` headers and an Ed25519 signature (hex) over
`request_id \\n user_id \\n timestamp \\n sha256hex(body)`, signed afresh for every attempt.
Any 2xx ends the delivery; anything else (or no answer within `webhook_timeout_s`) is tried
again after the next delay of the schedule (`SimConfig.webhook_retry_delays`, scaled by
`webhook_retry_scale`), then given up. The public key is served as a JWKS
(`WebhookSigner.jwks()`, at `/.well-known/jwks.json`), `x` base64url without padding.

Faults come from the plan's `webhook_*` rules (see `faults.py`); every event is counted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import time
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from batch.sim.config import SimConfig
from batch.sim.counters import Counters
from batch.sim.faults import FaultInjector, FaultRule
from batch.sim.jobs import Job

REQUEST_ID = "X-Fal-Webhook-Request-Id"
USER_ID = "X-Fal-Webhook-User-Id"
TIMESTAMP = "X-Fal-Webhook-Timestamp"
SIGNATURE = "X-Fal-Webhook-Signature"
PAYLOAD_ERROR = (
    "Response payload is not JSON serializable. Either return a JSON serializable object or "
    "use the queue endpoint to retrieve the response."
)


def b64url(data: bytes) -> str:
    """base64url without padding, as JWKS values are usually written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


class WebhookSigner:
    """One simulator's Ed25519 key pair (fresh per simulator) and its JWKS."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.kid = "sim-" + secrets.token_hex(4)

    def __repr__(self) -> str:
        return f"WebhookSigner(kid={self.kid!r})"

    @property
    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def jwks(self) -> dict[str, Any]:
        key = {"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "use": "sig", "alg": "EdDSA"}
        return {"keys": [{**key, "x": b64url(self.public_bytes)}]}

    def sign(self, request_id: str, user_id: str, timestamp: str, body: bytes) -> str:
        return self._key.sign(signed_message(request_id, user_id, timestamp, body)).hex()

    def headers(
        self, request_id: str, user_id: str, body: bytes, *, now: float | None = None
    ) -> dict[str, str]:
        """The four headers of one delivery of `body`, signed at `now` (default: the clock)."""
        timestamp = str(int(time.time() if now is None else now))
        return {
            REQUEST_ID: request_id,
            USER_ID: user_id,
            TIMESTAMP: timestamp,
            SIGNATURE: self.sign(request_id, user_id, timestamp, body),
        }

    def rotate(self) -> None:
        """A new key pair (the JWKS then lists only the new key), as after a key rotation."""
        self._key = Ed25519PrivateKey.generate()
        self.kid = "sim-" + secrets.token_hex(4)


def webhook_body(job: Job, *, payload_error: bool = False) -> bytes:
    """The JSON body fal posts for a completed job."""
    outcome = job.outcome
    if outcome is None:
        raise ValueError(f"job {job.request_id} has not completed")
    body: dict[str, Any] = {
        "request_id": job.request_id,
        "gateway_request_id": job.gateway_request_id,  # the last attempt's (§6)
    }
    try:
        payload: Any = json.loads(outcome.body) if outcome.body else None
    except ValueError:
        payload = None
    if outcome.status == 200:
        body["status"] = "OK"
        body["payload"] = None if payload_error else payload
        if payload_error:
            body["payload_error"] = PAYLOAD_ERROR
    else:
        body["status"] = "ERROR"
        body["error"] = f"Invalid status code: {outcome.status}"
        body["payload"] = payload
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


class WebhookSender:
    """Delivers completed jobs' webhooks in the background, on the retry schedule."""

    def __init__(self, config: SimConfig, counters: Counters, signer: WebhookSigner) -> None:
        self.config = config
        self.counters = counters
        self.signer = signer
        self.injector = FaultInjector(config.faults)
        self.session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._attempted = asyncio.Event()  # replaced each time a delivery is attempted

    def __repr__(self) -> str:
        return f"WebhookSender(in_flight={len(self._tasks)}, counts={dict(self.counters.webhooks)})"

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Cancel every pending delivery and close the session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def idle(self) -> None:
        """Wait until no delivery is pending (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def schedule(self) -> list[float]:
        """Seconds to wait before each attempt: 0, then the scaled retry delays."""
        scale = self.config.webhook_retry_scale
        return [0.0, *(d * scale for d in self.config.webhook_retry_delays)]

    def deliver(self, job: Job) -> None:
        """Start delivering a completed job's webhook, if it asked for one."""
        if job.webhook is None or self.session is None:
            return
        self.counters.record_webhook("deliveries")
        picked = {kind: self._pick(kind) for kind in _PER_DELIVERY}
        if picked["webhook_lost"] is not None:
            self.counters.record_webhook("lost", job.request_id)
            return
        body = webhook_body(job, payload_error=picked["webhook_payload_error"] is not None)
        if picked["webhook_payload_error"] is not None:
            self.counters.record_webhook("payload_errors")
        task = asyncio.create_task(
            self._run(job.webhook, job.request_id, body, picked),
            name=f"sim-webhook-{job.request_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pick(self, kind: str) -> FaultRule | None:
        rule = self.injector.pick("webhook", frozenset({kind}))
        if rule is not None:
            self.counters.record_fault(rule.kind, "webhook")
        return rule

    async def _run(
        self, url: str, request_id: str, body: bytes, picked: dict[str, FaultRule | None]
    ) -> None:
        delay, reorder = picked["webhook_delay"], picked["webhook_reorder"]
        if delay is not None:
            await asyncio.sleep(delay.delay)
        if reorder is not None:
            # Held back until a later delivery has been attempted: out of completion order.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._attempted.wait(), reorder.delay)
        for wait in self.schedule():
            await asyncio.sleep(wait)
            if await self._attempt(url, request_id, body):
                self.counters.record_webhook("delivered", request_id)
                if picked["webhook_duplicate"] is not None:
                    self.counters.record_webhook("duplicates_sent")
                    if await self._attempt(url, request_id, body):
                        self.counters.record_webhook("delivered", request_id)
                return
            self.counters.record_webhook("failed_attempts")
        self.counters.record_webhook("given_up")

    async def _attempt(self, url: str, request_id: str, body: bytes) -> bool:
        """One POST; True on any 2xx."""
        assert self.session is not None
        self.counters.record_webhook("attempts")
        headers = self.signer.headers(request_id, self.config.user_id, body)
        if self._pick("webhook_bad_signature") is not None:
            self.counters.record_webhook("bad_signatures")
            headers[SIGNATURE] = _corrupt(headers[SIGNATURE])
        headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=self.config.webhook_timeout_s)
        status = 0
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            status = 0  # refused, reset, timed out, or not a usable URL
        finally:
            self.counters.record_webhook_response(status)
            event, self._attempted = self._attempted, asyncio.Event()
            event.set()
        return 200 <= status < 300


_PER_DELIVERY = (
    "webhook_lost",
    "webhook_duplicate",
    "webhook_delay",
    "webhook_reorder",
    "webhook_payload_error",
)


def _corrupt(signature_hex: str) -> str:
    """The same signature with its first byte flipped: well-formed, and invalid."""
    first = int(signature_hex[:2], 16) ^ 0xFF
    return f"{first:02x}{signature_hex[2:]}"
