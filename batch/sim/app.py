"""The queue routes of fal-protocol.md §1-§4 over the model, and the admin routes.

    POST /{endpoint id}                          submit
    GET  /{root}/requests/{id}/status            status (202 waiting or running, 200 completed)
    GET  /{root}/requests/{id}/status/stream     status as server-sent events
    GET  /{root}/requests/{id}[/response]        result (the model's answer, replayed)
    PUT  /{root}/requests/{id}/cancel            cancel
    GET  /v1/models/pricing?endpoint_id=...      the Platform API's prices (`Key` auth)
    GET  /v1/models/requests/by-endpoint?...     the Platform API's request history (history.py)
    GET  /_sim/counters, /_sim/jobs, /_sim/health   admin, no auth
    GET  /.well-known/jwks.json                  the webhook signing key (webhooks.py), no auth

The storage routes (`storage.py`) are registered first; the queue routes are catch-alls.
What a submit carries besides its body (headers, `fal_` parameters) is read by `submits.py`.

A submit is refused, in this order: 404 for an app `SimConfig.apps` does not list, 403 while
the account is locked (`billing.py`), 429 from `max_submits_per_second`, 422 for a bad
`fal_max_queue_length` or body, 429 when more than `fal_max_queue_length` requests wait in the
endpoint's queue. Every submit that reaches the queue has its platform headers and `fal_`
query parameters counted (`Counters.submit_params`) and kept on its `JobRecord.sent`. Every
accepted submit is recorded in the request history before its answer is written.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

from aiohttp import web

from batch.sim import jobs
from batch.sim.billing import LOCKED_DETAIL, Billing
from batch.sim.clock import Clock
from batch.sim.config import SimConfig
from batch.sim.counters import Counters, payload_hash
from batch.sim.faults import FaultInjector, FaultRule
from batch.sim.gateway import (
    REQUEST_ID_HEADER,
    auth_middleware,
    faults_middleware,
    json_response,
    observe_middleware,
    rate_limited,
)
from batch.sim.history import History
from batch.sim.jobs import COMPLETED, Job
from batch.sim.model import Model
from batch.sim.paths import (
    HISTORY_PATH,
    PRICING_PATH,
    Target,
    endpoint_root,
    parse_request_path,
    segments,
)
from batch.sim.storage import FileStore, lifecycle_ttl, storage_routes
from batch.sim.submits import MIN_START_TIMEOUT_S as MIN_START_TIMEOUT_S
from batch.sim.submits import NO_RETRY_VALUES as NO_RETRY_VALUES
from batch.sim.submits import PLATFORM_HEADERS as PLATFORM_HEADERS
from batch.sim.submits import PLATFORM_QUERY as PLATFORM_QUERY
from batch.sim.submits import START_TIMEOUT_HEADERS as START_TIMEOUT_HEADERS
from batch.sim.submits import STORE_IO_OFF as STORE_IO_OFF
from batch.sim.submits import SubmitBucket as SubmitBucket
from batch.sim.submits import json_body, low_priority, no_retry, queue_limit, store_io
from batch.sim.submits import platform_params as platform_params
from batch.sim.submits import start_timeout as start_timeout
from batch.sim.webhooks import WebhookSigner

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
NOT_FOUND = {"status": "NOT_FOUND"}
MAX_PRICED_ENDPOINTS = 50


class QueueApp:
    """Handlers bound to one simulator's model, counters and fault injector."""

    def __init__(
        self,
        config: SimConfig,
        store: FileStore,
        model: Model,
        counters: Counters,
        signer: WebhookSigner | None = None,
        clock: Clock = time.time,
        billing: Billing | None = None,
        history: History | None = None,
    ):
        self.config = config
        self.clock = clock
        self.signer = signer or WebhookSigner()
        self.store = store
        self.model = model
        self.counters = counters
        self.billing = billing if billing is not None else model.billing
        # The simulator passes its own, whose `ended` it hooks to the model's completions.
        self.history = history if history is not None else History(config, clock)
        self.injector = FaultInjector(config.faults)
        rate = config.max_submits_per_second
        self.bucket = SubmitBucket(rate, clock) if rate is not None else None
        self.cdn_url: str | None = None  # the CDN host's origin, when it has its own port
        self.cdn_port: int | None = None
        known = config.apps
        self.apps = None if known is None else {endpoint_root(a) or a for a in known}

    def build(self) -> web.Application:
        config = self.config
        app = web.Application(
            client_max_size=config.max_body_bytes,
            middlewares=[
                observe_middleware(self.counters),
                faults_middleware(self.injector, self.counters, self.on_cdn),
                auth_middleware(config.key),
            ],
        )
        cdn_origin = self.cdn_origin if config.cdn_host else None
        app.add_routes(
            [
                web.get("/_sim/counters", self.admin_counters),
                web.get("/_sim/jobs", self.admin_jobs),
                web.get("/_sim/health", self.admin_health),
                web.get("/.well-known/jwks.json", self.jwks),
                web.get(PRICING_PATH, self.pricing),
                web.get(HISTORY_PATH, self.history.handle),
                *storage_routes(
                    self.store,
                    token_ttl_s=config.token_ttl_s,
                    clock=self.clock,
                    media_expiration_s=config.media_expiration_s,
                    signed_url_ttl_s=config.signed_url_ttl_s,
                    cdn_origin=cdn_origin,
                ),
                web.post("/{tail:.*}", self.submit),
                web.get("/{tail:.*}", self.request),
                web.put("/{tail:.*}", self.request),
            ]
        )
        return app

    def origin(self, request: web.Request) -> str:
        return self.config.public_url or str(request.url.origin())

    def cdn_origin(self, request: web.Request) -> str:
        """The CDN host's origin (the token's `base_url`), or this request's own."""
        return self.cdn_url or str(request.url.origin())

    def on_cdn(self, request: web.Request) -> bool:
        """Whether the request came in on the CDN host's port."""
        if self.cdn_port is None or request.transport is None:
            return False
        sockname = request.transport.get_extra_info("sockname")
        return isinstance(sockname, tuple) and len(sockname) >= 2 and sockname[1] == self.cdn_port

    # --- admin ------------------------------------------------------------------------------

    async def admin_counters(self, request: web.Request) -> web.Response:
        return json_response(self.counters.snapshot())

    async def admin_jobs(self, request: web.Request) -> web.Response:
        return json_response({"jobs": [r.as_dict() for r in self.model.records]})

    async def admin_health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True, "model": repr(self.model)})

    async def jwks(self, request: web.Request) -> web.Response:
        return json_response(self.signer.jwks())

    # --- platform API -----------------------------------------------------------------------

    async def pricing(self, request: web.Request) -> web.Response:
        """`GET /v1/models/pricing?endpoint_id=a,b` (or repeated): the configured prices of
        the endpoints that have one, in fal's documented shape."""
        wanted: list[str] = []
        for value in request.query.getall("endpoint_id", []):
            wanted.extend(part.strip() for part in value.split(",") if part.strip())
        if not wanted or len(wanted) > MAX_PRICED_ENDPOINTS:
            msg = "Field required" if not wanted else "List should have at most 50 items"
            kind = "missing" if not wanted else "too_long"
            item = {"loc": ["query", "endpoint_id"], "msg": msg, "type": kind}
            return json_response({"detail": [item]}, 422)
        prices = []
        for endpoint in dict.fromkeys(wanted):
            price = self.billing.price(endpoint)
            if price is not None:
                prices.append(
                    {
                        "endpoint_id": endpoint,
                        "unit_price": price.unit_price,
                        "unit": price.unit,
                        "currency": price.currency,
                    }
                )
        return json_response({"prices": prices, "next_cursor": None, "has_more": False})

    # --- submit -----------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        endpoint = "/".join(segments(request.match_info["tail"]))
        root = endpoint_root(endpoint)
        if root is None or (self.apps is not None and root not in self.apps):
            return json_response({"detail": f"Application {endpoint!r} not found"}, 404)
        sent = platform_params(request)
        self.counters.record_submit_params(sent)
        if self.billing.locked:
            return json_response({"detail": LOCKED_DETAIL}, 403)
        if self.bucket is not None and (wait := self.bucket.take()) > 0:
            return rate_limited(max(1, math.ceil(wait)), "Too many submits (simulated limit)")
        limit = queue_limit(request)
        if isinstance(limit, web.Response):
            return limit
        payload = await json_body(request)
        if isinstance(payload, web.Response):
            return payload
        if limit is not None and self.model.waiting(endpoint) > limit:
            detail = f"Queue is full: more than {limit} requests are waiting for {endpoint}"
            return json_response({"detail": detail}, 429)
        fault = self._pick_job_fault("job_error")
        retry_fault = self._pick_job_fault("server_retry")
        straggler = self._pick_job_fault("straggler")
        digest = payload_hash(endpoint, payload)
        origin = self.origin(request)
        job, position = self.model.submit(
            endpoint=endpoint,
            root=root,
            payload=payload,
            digest=digest,
            base_url=origin,
            low=low_priority(request),
            start_timeout=start_timeout(request),
            webhook=request.query.get("fal_webhook"),
            fault=fault,
            retry_fault=retry_fault,
            slowdown=straggler.factor if straggler is not None else 1.0,
            no_retry=no_retry(request),
            store_io=store_io(request),
            media_ttl_s=lifecycle_ttl(request.headers, self.config.media_expiration_s),
            sent=sent,
        )
        self.counters.record_submit(digest)
        self.history.accepted(job)
        body = {
            "request_id": job.request_id,
            **jobs.urls(origin, root, job.request_id),
            "queue_position": position,
            "status": "IN_QUEUE",
            "gateway_request_id": job.gateway_request_id,
        }
        return json_response(body, 200, {REQUEST_ID_HEADER: job.request_id})

    def _pick_job_fault(self, kind: str) -> FaultRule | None:
        rule = self.injector.pick("submit", frozenset({kind}))
        if rule is not None:
            self.counters.record_fault(rule.kind, "submit")
        return rule

    # --- status, stream, result, cancel -----------------------------------------------------

    async def request(self, request: web.Request) -> web.StreamResponse:
        target = parse_request_path(request.path)
        if target is None:
            return json_response({"detail": "Not Found"}, 404)
        headers = {REQUEST_ID_HEADER: target.request_id}
        if target.subpath or request.method != target.method:
            return json_response({"detail": "Method Not Allowed"}, 405, headers)
        if target.action == "status":
            self.counters.record_status_call(target.request_id)
        job = self.find(target)
        if job is None:
            return json_response(NOT_FOUND, 404, headers)
        with_logs = request.query.get("logs", "").strip().lower() in TRUE_VALUES
        if target.action == "status":
            body = self.status_body(job, request, with_logs)
            return json_response(body, 200 if job.state == COMPLETED else 202, headers)
        if target.action == "stream":
            return await self.stream(request, job, target, with_logs)
        if target.action == "cancel":
            if self.model.cancel(job):
                return json_response({"status": "CANCELLATION_REQUESTED"}, 202, headers)
            return json_response({"status": "ALREADY_COMPLETED"}, 400, headers)
        return self.result(job, headers)

    def find(self, target: Target) -> Job | None:
        """The live job a request path names, unless an `expire` fault forgets it now."""
        job = self.model.get(target.request_id)
        if job is None or job.root != target.root:
            return None
        if job.state == COMPLETED:
            rule = self.injector.pick(target.action, frozenset({"expire"}))
            if rule is not None:
                self.counters.record_fault(rule.kind, target.action)
                self.model.forget(job)
                return None
        return job

    def status_body(self, job: Job, request: web.Request, with_logs: bool) -> dict[str, Any]:
        position = self.model.queue_position(job) if job.state == jobs.IN_QUEUE else None
        return jobs.status_body(
            job, self.origin(request), with_logs=with_logs, queue_position=position
        )

    def result(self, job: Job, headers: dict[str, str]) -> web.Response:
        outcome = job.outcome
        if job.state != COMPLETED or outcome is None:
            return json_response({"detail": "Request is still in progress"}, 400, headers)
        if self.config.media_renew_on_result:
            self.model.renew_media(job)
        return web.Response(
            body=outcome.body,
            status=outcome.status,
            headers={**outcome.headers, **headers},
            content_type="application/json",
        )

    async def stream(
        self, request: web.Request, job: Job, target: Target, with_logs: bool
    ) -> web.StreamResponse:
        """One `data:` event per change, `: ping` every ping_interval_s, closed at COMPLETED."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                REQUEST_ID_HEADER: target.request_id,
            }
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        interval = self.config.ping_interval_s
        next_ping = loop.time() + interval
        last: dict[str, Any] | None = None
        try:
            while True:
                changed = self.model.changed(job)
                body = self.status_body(job, request, with_logs)
                if body != last:
                    await response.write(f"data: {json.dumps(body)}\n\n".encode())
                    last = body
                if job.state == COMPLETED or self.model.closing:
                    break
                try:
                    await asyncio.wait_for(changed.wait(), max(0.0, next_ping - loop.time()))
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    next_ping = loop.time() + interval
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; nothing left to tell it
        return response
