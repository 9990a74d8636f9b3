"""The simulator's front door: counting, fault injection and auth, as aiohttp middlewares.

Order, outermost first: `observe` (counts every request and the status the client got; 0 for a
dropped connection), `faults` (the ingress faults of the plan, and `cdn_down` answers on the
CDN host), `auth` (checks the key and stamps `x-fal-request-id` on fal's own answers). Admin
paths (`/_sim/...`, `/.well-known/...`) pass through uncounted, unfaulted and without auth.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from batch.sim import jobs
from batch.sim.counters import DROPPED, Counters
from batch.sim.faults import INGRESS_FAULTS, FaultInjector, FaultRule
from batch.sim.paths import classify

REQUEST_ID_HEADER = "x-fal-request-id"
ROUTE_KEY = web.RequestKey("sim_route", str)
DROPPED_KEY = web.RequestKey("sim_dropped", bool)
NO_AUTH_ROUTES = frozenset({"upload", "files"})  # upload tokens are checked by storage.py

NGINX_REASONS = {
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def flat_error(
    status: int, detail: str, error_type: str, headers: dict[str, str] | None = None
) -> web.Response:
    """fal's flat infrastructure error: `{"detail", "error_type"}` plus `X-Fal-Error-Type`."""
    all_headers = {"X-Fal-Error-Type": error_type, REQUEST_ID_HEADER: str(uuid.uuid4())}
    all_headers.update(headers or {})
    return json_response({"detail": detail, "error_type": error_type}, status, all_headers)


def rate_limited(retry_after: float, detail: str) -> web.Response:
    return flat_error(
        429,
        detail,
        "concurrent_requests_limit",
        {"Retry-After": f"{retry_after:g}", "X-Fal-Needs-Retry": "1"},
    )


def ingress_error(status: int) -> web.Response:
    """What fal's nginx answers: html, and no `x-fal-request-id` (so clients may retry)."""
    if status == 500:
        return flat_error(500, "Internal server error", "internal_error")
    title = f"{status} {NGINX_REASONS[status]}"
    html = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return web.Response(text=html, status=status, content_type="text/html")


def fal_error(rule: FaultRule) -> web.Response:
    """fal's own error answer (`fal_error`): the errors docs' body and both headers."""
    outcome = jobs.error_answer(rule.status, rule.error_type, rule.retryable)
    headers = {**outcome.headers, REQUEST_ID_HEADER: str(uuid.uuid4())}
    return web.Response(
        body=outcome.body, status=outcome.status, headers=headers, content_type="application/json"
    )


def drop(request: web.Request) -> web.Response:
    """Close the connection so the client gets no answer; aiohttp then skips the write."""
    request[DROPPED_KEY] = True
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)


def observe_middleware(counters: Counters) -> Middleware:
    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = classify(request.method, request.path)
        if route is None:
            return await handler(request)
        request[ROUTE_KEY] = route
        counters.record_request(route)
        status = DROPPED
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if request.get(DROPPED_KEY):
                status = DROPPED
            counters.record_response(route, status)

    return observe


async def _apply(rule: FaultRule, request: web.Request, handler: Handler) -> web.StreamResponse:
    if rule.kind == "slow":
        await asyncio.sleep(rule.delay)
        return await handler(request)
    if rule.kind == "drop_before":
        return drop(request)
    if rule.kind == "drop_after":
        await handler(request)
        return drop(request)
    if rule.kind == "rate_limit":
        return rate_limited(rule.retry_after, "Concurrent requests limit exceeded (simulated)")
    if rule.kind == "fal_error":
        return fal_error(rule)
    return ingress_error(rule.status)


CDN_DOWN = frozenset({"cdn_down"})


def faults_middleware(
    injector: FaultInjector,
    counters: Counters,
    on_cdn: Callable[[web.Request], bool] | None = None,
) -> Middleware:
    """Ingress faults on every counted route; `cdn_down` (5xx) on requests to the CDN host
    (`on_cdn(request)`)."""

    @web.middleware
    async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.get(ROUTE_KEY)
        if route is None:
            return await handler(request)
        if on_cdn is not None and on_cdn(request):
            down = injector.pick(route, CDN_DOWN)
            if down is not None and down.status != 0:
                counters.record_fault(down.kind, route)
                return ingress_error(down.status)
        rule = injector.pick(route, INGRESS_FAULTS)
        if rule is None:
            return await handler(request)
        counters.record_fault(rule.kind, route)
        return await _apply(rule, request, handler)

    return faults


def authorized(header: str, key: str) -> bool:
    """`Key <key>` or `Bearer <key>`, compared in constant time."""
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() not in ("key", "bearer"):
        return False
    return hmac.compare_digest(credential.strip().encode(), key.encode())


def auth_middleware(key: str) -> Middleware:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.get(ROUTE_KEY)
        if route is None or route in NO_AUTH_ROUTES:
            return await handler(request)
        header = request.headers.get("Authorization")
        if header is None:
            response: web.StreamResponse = json_response(
                {"detail": "Missing credentials: send 'Authorization: Key <FAL_KEY>'"}, 401
            )
        elif not authorized(header, key):
            response = json_response({"detail": "Invalid credentials"}, 401)
        else:
            response = await handler(request)
        if not response.prepared and REQUEST_ID_HEADER not in response.headers:
            response.headers[REQUEST_ID_HEADER] = str(uuid.uuid4())
        return response

    return auth
