"""One HTTP exchange with fal, and the one place where its failures become our errors.

Everything above this module sees `FalError` subclasses and decoded bodies, never an aiohttp
exception or a raw response. Retry decisions are made by callers from the error's type.

Error bodies come in three shapes, all read here: model errors ``{"detail": [{loc, msg, type,
...}]}`` (or a plain string detail), request errors ``{"detail": "...", "error_type": "..."}``
with the same value in ``X-Fal-Error-Type``, and the Platform API's ``{"error": {type, message,
docs_url, request_id}}``. ``X-Fal-Retryable: true|false`` may come with any of them.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import math
import re
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from batch.fal.errors import (
    AccountLockedError,
    AmbiguousSubmitError,
    AuthError,
    ConnectError,
    FalError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    StartTimeoutError,
    TlsError,
    TransientError,
)

# error_type values that mean "the caller's fault or choice": retrying cannot help (§3 table).
PERMANENT_ERROR_TYPES = frozenset({"client_disconnected", "client_cancelled", "bad_request"})
_MAX_DETAIL = 600
# fal's answer to a submit from an account it takes no work from (fal-ai/fal#1147, #1112):
# 403 {"detail": "User is locked. Reason: Exhausted balance ..."}. A whole word, so that
# "blocked" is not taken for it.
_LOCKED = re.compile(r"\blocked\b", re.IGNORECASE)

Params = Mapping[str, str] | Sequence[tuple[str, str]]


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
    """fal's `detail` (a string or a list of field errors), the Platform API's error message,
    else the body itself, or its raw text shortened."""
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    platform = _platform_error(body)
    if platform is not None and isinstance(platform.get("message"), str):
        return platform["message"]
    if isinstance(body, dict):
        return body
    text = "" if body is None else str(body)
    return text[:_MAX_DETAIL]


def _platform_error(body: Any) -> dict[str, Any] | None:
    """The Platform API's error object, ``{"error": {"type", "message", ...}}``, if that is what
    the body is (a queue status's ``error`` is a string, never an object)."""
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def parse_billable_units(value: str | None) -> float | None:
    """``X-Fal-Billable-Units`` as a number; None when absent, unreadable, negative or not
    finite."""
    try:
        units = float((value or "").strip())
    except ValueError:
        return None
    return units if math.isfinite(units) and units >= 0 else None


def parse_retryable(value: str | None) -> bool | None:
    """``X-Fal-Retryable``: "true" or "false" (any case); None when absent or anything else."""
    text = (value or "").strip().lower()
    return True if text == "true" else False if text == "false" else None


def error_types(body: Any, headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(the declared error type, the type to record).

    Declared: the body's ``error_type``, else ``X-Fal-Error-Type`` (request errors); only it
    decides a classification. Recorded: that, else the Platform API's ``error.type``, else the
    first ``detail[].type`` of a model error (e.g. ``content_policy_violation``).
    """
    declared = None
    if isinstance(body, dict) and isinstance(body.get("error_type"), str):
        declared = body["error_type"]
    declared = declared or headers.get("x-fal-error-type") or None
    if declared:
        return declared, declared
    platform = _platform_error(body)
    if platform is not None and isinstance(platform.get("type"), str):
        return None, platform["type"]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0].get("type")
        if isinstance(first, str) and first:
            return None, first
    return None, None


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
    """Classify a non-2xx answer. Pure: a function of status, headers and body only.

    ``X-Fal-Retryable: false`` turns an answer that would be retried (a TransientError or a
    RateLimitedError) into a PermanentError, keeping status, detail and error type; the auth
    errors keep their classes (they stop admission rather than fail one item).
    """
    status, headers = reply.status, reply.headers
    detail = error_detail(reply.body)
    declared, error_type = error_types(reply.body, headers)
    retryable = parse_retryable(headers.get("x-fal-retryable"))
    kw: dict[str, Any] = {
        "status": status,
        "request_id": reply.request_id or request_id,
        "detail": detail,
        "error_type": error_type,
        "retryable": retryable,
        "billable_units": parse_billable_units(headers.get("x-fal-billable-units")),
    }
    message = f"{call}: HTTP {status}: {describe(detail)}".rstrip(": ")
    if status in (401, 403):
        if status == 403 and _LOCKED.search(describe(detail)):
            reason = detail if isinstance(detail, str) else describe(detail)
            return AccountLockedError(message, reason=reason, **kw)
        return AuthError(message, **kw)
    error = _classify(message, status, headers, declared, kw)
    if retryable is False and not isinstance(error, PermanentError):
        return PermanentError(f"{message} (X-Fal-Retryable: false)", **kw)
    return error


def _classify(
    message: str, status: int, headers: Mapping[str, str], declared: str | None, kw: Any
) -> FalError:
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return RateLimitedError(message, retry_after=retry_after, **kw)
    if status == 504 and headers.get("x-fal-request-timeout-type", "").lower() == "user":
        return StartTimeoutError(message, **kw)
    if declared in PERMANENT_ERROR_TYPES:
        return PermanentError(message, **kw)
    if status in (408, 409) or status >= 500:
        return TransientError(message, **kw)
    if status == 404:
        return NotFoundError(message, **kw)
    return PermanentError(message, **kw)


def error_for_exception(
    call: str, exc: BaseException, *, submit: bool, url: str | None = None
) -> FalError:
    """Classify a transport failure. A submit whose bytes may have left is ambiguous; a
    certificate that did not verify is a TlsError (a configuration error, never retried)."""
    name = type(exc).__name__
    reason = certificate_failure(exc)
    if reason is not None:
        host = exc.host if isinstance(exc, aiohttp.ClientConnectorError) else _host(url)
        where = host or "the server"
        return TlsError(
            f"{call}: the TLS certificate of {where} did not verify ({reason}). If {where} is "
            "the right host, point `ca_bundle` (or SSL_CERT_FILE) at a CA bundle that signs "
            "its certificate; otherwise fix the URL.",
            host=host,
            reason=reason,
        )
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return ConnectError(f"{call}: could not connect ({name})")
    if isinstance(exc, aiohttp.InvalidURL):
        return PermanentError(f"{call}: invalid URL")
    kind = AmbiguousSubmitError if submit else TransientError
    reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"connection lost ({name})"
    return kind(f"{call}: {reason}")


def certificate_failure(exc: BaseException) -> str | None:
    """Why a certificate or host name did not verify, when that is what `exc` (or its cause)
    is: aiohttp's ClientConnectorCertificateError, a ClientSSLError or any other error caused
    by ssl.SSLCertVerificationError. None for every other failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, aiohttp.ClientConnectorCertificateError):
            return _verify_reason(current.certificate_error)
        if isinstance(current, aiohttp.ClientConnectorError) and isinstance(
            current.os_error, ssl.SSLCertVerificationError
        ):
            return _verify_reason(current.os_error)
        if isinstance(current, ssl.SSLCertVerificationError):
            return _verify_reason(current)
        current = current.__cause__ or current.__context__
    return None


def _verify_reason(error: BaseException) -> str:
    for reason in (getattr(error, "verify_message", None), getattr(error, "reason", None)):
        if isinstance(reason, str) and reason:
            return reason
    return str(error) or type(error).__name__


def _host(url: str | None) -> str | None:
    try:
        return URL(url).host if url else None
    except (TypeError, ValueError):
        return None


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
        params: Params | None = None,
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
                # a BytesIO, not bytes: aiohttp sends a large bytes body in one write that
                # holds the event loop (and warns); from a BytesIO it streams
                data=None if data is None else io.BytesIO(data),
                params=params,
                headers=all_headers,
                timeout=timeout,
            ) as resp:
                raw = await resp.read()
                reply = Reply(resp.status, _lower(resp.headers), decode_body(raw))
        except _TRANSPORT_ERRORS as exc:
            raise error_for_exception(call, exc, submit=submit, url=url) from None
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
        params: Params | None = None,
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
                    raise error_for_reply(
                        call, Reply(head.status, head.headers, decode_body(raw)), request_id
                    )
                yield head, _lines(call, resp)
        except _TRANSPORT_ERRORS as exc:
            raise error_for_exception(call, exc, submit=False, url=url) from None


async def _lines(call: str, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for line in resp.content:
            yield line
    except _TRANSPORT_ERRORS as exc:
        raise error_for_exception(call, exc, submit=False) from None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
