"""One HTTP exchange with fal, and the one place where its failures become our errors.

Everything above this module sees `FalError` subclasses and decoded bodies, never an aiohttp
exception or a raw response. Retry decisions are made by callers from the error's type.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from batch.fal.errors import (
    AmbiguousSubmitError,
    AuthError,
    ConnectError,
    FalError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    StartTimeoutError,
    TransientError,
)

# error_type values that mean "the caller's fault or choice": retrying cannot help (§3 table).
PERMANENT_ERROR_TYPES = frozenset({"client_disconnected", "client_cancelled", "bad_request"})
_MAX_DETAIL = 600


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any  # decoded JSON, or text when the body was not JSON

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-fal-request-id")


def decode_body(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return text


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_detail(body: Any) -> Any:
    """fal's `detail` (a string or a list of field errors), else the raw text, shortened."""
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    if isinstance(body, dict):
        return body
    text = "" if body is None else str(body)
    return text[:_MAX_DETAIL]


def describe(detail: Any) -> str:
    """A one-line human summary of a detail, for messages."""
    if isinstance(detail, list):
        parts = []
        for entry in detail[:5]:
            if isinstance(entry, dict):
                loc = ".".join(str(p) for p in entry.get("loc", []) if p != "body")
                parts.append(f"{loc}: {entry.get('msg', '')}" if loc else str(entry.get("msg")))
            else:
                parts.append(str(entry))
        return "; ".join(parts)[:_MAX_DETAIL]
    return str(detail)[:_MAX_DETAIL]


def error_for_reply(call: str, reply: Reply, request_id: str | None = None) -> FalError:
    """Classify a non-2xx answer. Pure: a function of status, headers and body only."""
    status, headers = reply.status, reply.headers
    detail = error_detail(reply.body)
    error_type = None
    if isinstance(reply.body, dict) and isinstance(reply.body.get("error_type"), str):
        error_type = reply.body["error_type"]
    error_type = error_type or headers.get("x-fal-error-type")
    kw: dict[str, Any] = {
        "status": status,
        "request_id": reply.request_id or request_id,
        "detail": detail,
        "error_type": error_type,
    }
    message = f"{call}: HTTP {status}: {describe(detail)}".rstrip(": ")
    if status in (401, 403):
        return AuthError(message, **kw)
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return RateLimitedError(message, retry_after=retry_after, **kw)
    if status == 504 and headers.get("x-fal-request-timeout-type", "").lower() == "user":
        return StartTimeoutError(message, **kw)
    if error_type in PERMANENT_ERROR_TYPES:
        return PermanentError(message, **kw)
    if status in (408, 409) or status >= 500:
        return TransientError(message, **kw)
    if status == 404:
        return NotFoundError(message, **kw)
    return PermanentError(message, **kw)


def error_for_exception(call: str, exc: BaseException, *, submit: bool) -> FalError:
    """Classify a transport failure. A submit whose bytes may have left is ambiguous."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return ConnectError(f"{call}: could not connect ({name})")
    if isinstance(exc, aiohttp.InvalidURL):
        return PermanentError(f"{call}: invalid URL")
    kind = AmbiguousSubmitError if submit else TransientError
    reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"connection lost ({name})"
    return kind(f"{call}: {reason}")


_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class Transport:
    """Sends one request with the auth header and a per-call timeout; translates failures."""

    def __init__(
        self, session: aiohttp.ClientSession, auth_header: str | None, user_agent: str
    ) -> None:
        """`auth_header` None: no Authorization header (public documents such as a JWKS)."""
        self._session = session
        self._headers = {"User-Agent": user_agent}
        if auth_header is not None:
            self._headers["Authorization"] = auth_header

    async def send(
        self,
        call: str,
        method: str,
        url: str,
        *,
        timeout: aiohttp.ClientTimeout,
        json_body: Any = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
        submit: bool = False,
    ) -> Reply:
        """One request: a JSON body (``json_body``) or raw bytes (``data``); ``headers`` are
        added to (and may replace) the auth and user-agent headers."""
        all_headers = {**self._headers, "Accept": "application/json", **(headers or {})}
        try:
            async with self._session.request(
                method,
                url,
                json=json_body,
                data=data,
                params=params,
                headers=all_headers,
                timeout=timeout,
            ) as resp:
                raw = await resp.read()
                reply = Reply(resp.status, _lower(resp.headers), decode_body(raw))
        except _TRANSPORT_ERRORS as exc:
            raise error_for_exception(call, exc, submit=submit) from None
        if reply.status >= 300:
            raise error_for_reply(call, reply, request_id)
        return reply

    @asynccontextmanager
    async def stream(
        self,
        call: str,
        url: str,
        *,
        timeout: aiohttp.ClientTimeout,
        params: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[tuple[Reply, AsyncIterator[bytes]]]:
        """An open streaming GET: its head, and its body line by line (translated errors)."""
        headers = {**self._headers, "Accept": "text/event-stream"}
        try:
            async with self._session.get(
                url, params=params, headers=headers, timeout=timeout
            ) as resp:
                head = Reply(resp.status, _lower(resp.headers), None)
                if resp.status >= 300:
                    raw = await resp.read()
                    raise error_for_reply(call, Reply(head.status, head.headers, decode_body(raw)))
                yield head, _lines(call, resp)
        except _TRANSPORT_ERRORS as exc:
            raise error_for_exception(call, exc, submit=False) from None


async def _lines(call: str, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for line in resp.content:
            yield line
    except _TRANSPORT_ERRORS as exc:
        raise error_for_exception(call, exc, submit=False) from None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
