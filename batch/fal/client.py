"""QueueClient: fal's queue API — submit, status, status stream, result, cancel.

One aiohttp session per client; one attempt per call (retrying is the caller's decision, made
from the error's type). URLs come from the server's submit answer; `handle_for` rebuilds them
from an endpoint id and a request id for re-attaching (fal-protocol §5).

TLS: the session verifies certificates with ``ssl.create_default_context()``, made when the
client is (so it honours SSL_CERT_FILE / SSL_CERT_DIR), or with a context that trusts the CA
file ``ca_bundle`` names. A `StorageClient` or `PlatformClient` built on `session` shares it.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp

from batch.errors import InvalidInputError
from batch.fal.auth import Credentials, credentials_from_env
from batch.fal.endpoints import request_url, submit_url
from batch.fal.errors import AuthError, NotFoundError, PermanentError, TransientError
from batch.fal.sse import iter_events
from batch.fal.transport import Reply, Transport, parse_billable_units
from batch.fal.types import (
    Completed,
    InProgress,
    LogEntry,
    Queued,
    RequestHandle,
    Result,
    Status,
)

DEFAULT_QUEUE_URL = "https://queue.fal.run"
USER_AGENT = "firered-batch/0.1 (python)"
# Headers a caller's platform headers may not replace: the key, and what the body needs.
_RESERVED_HEADERS = frozenset({"authorization", "content-type", "content-length", "host"})


@dataclass(frozen=True)
class Timeouts:
    """Per-call limits in seconds (fal_client uses 120 s read and 30 s connect)."""

    connect: float = 10.0
    submit: float = 60.0
    status: float = 30.0
    result: float = 120.0
    cancel: float = 30.0
    stream_idle: float = 60.0  # fal pings every ~15 s; silence this long means a dead stream

    def total(self, seconds: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=seconds, sock_connect=self.connect)


class QueueClient:
    """An async client for fal's queue. Use it as `async with QueueClient(...) as fal:`."""

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_QUEUE_URL,
        credentials: Credentials | None = None,
        timeouts: Timeouts | None = None,
        max_connections: int = 100,
        ssl_context: ssl.SSLContext | None = None,
        session: aiohttp.ClientSession | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
    ) -> None:
        """``ca_bundle``: a PEM file of the CAs to trust instead of the system's (a proxy's or
        a simulator's CA); ``ssl_context``: a ready context instead. Both only for the session
        the client makes (not with ``session``)."""
        credentials = credentials or credentials_from_env()
        if credentials is None:
            raise AuthError("no fal key: set FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET)")
        if ssl_context is not None and ca_bundle is not None:
            raise ValueError("give ca_bundle or ssl_context, not both")
        if session is not None and (ssl_context is not None or ca_bundle is not None):
            raise ValueError("ca_bundle and ssl_context apply to a session the client makes")
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self._own_session = session is None
        if session is None:
            context = ssl_context if ssl_context is not None else tls_context(ca_bundle)
            connector = aiohttp.TCPConnector(limit=max_connections, ssl=context)
            session = aiohttp.ClientSession(connector=connector)
        self._session = session
        self._credentials = credentials
        self._transport = Transport(session, credentials.header, USER_AGENT)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and not self._session.closed:
            await self._session.close()

    @property
    def credentials(self) -> Credentials:
        """The key this client sends (hidden in repr), e.g. for a `StorageClient`."""
        return self._credentials

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session (its TLS settings included): for downloads of output files, a
        `StorageClient` and a `PlatformClient`."""
        return self._session

    async def submit(
        self,
        endpoint: str,
        payload: Mapping[str, Any],
        *,
        webhook_url: str | None = None,
        priority: str | None = None,
        start_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        max_queue_length: int | None = None,
    ) -> RequestHandle:
        """Queue one request. Raises AmbiguousSubmitError when it may have been queued.

        ``headers``: platform headers sent as given (X-Fal-Request-Timeout, X-Fal-Runner-Hint,
        X-Fal-No-Retry, X-Fal-Store-IO, X-Fal-Object-Lifecycle-Preference, ...); one named
        like a header that ``priority`` or ``start_timeout`` makes (in any case) replaces it.
        ``max_queue_length``: fal's ``fal_max_queue_length`` query parameter: fal answers 429
        when more than that many requests already wait in the endpoint's queue.
        """
        params: dict[str, str] = {}
        if webhook_url:
            params["fal_webhook"] = webhook_url
        if max_queue_length is not None:
            if isinstance(max_queue_length, bool) or max_queue_length < 0:
                raise ValueError(f"max_queue_length must be >= 0, not {max_queue_length!r}")
            params["fal_max_queue_length"] = str(int(max_queue_length))
        sent: dict[str, str] = {}
        if priority:
            sent["X-Fal-Queue-Priority"] = priority
        if start_timeout is not None:
            # Both names: the deprecated one for older gateways; Start-Timeout wins when both.
            sent["X-Fal-Request-Start-Timeout"] = str(float(start_timeout))
            sent["X-Fal-Request-Timeout"] = str(float(start_timeout))
        sent = merge_headers(sent, headers)
        reply = await self._transport.send(
            f"submit {endpoint}",
            "POST",
            submit_url(self.base_url, endpoint),
            timeout=self.timeouts.total(self.timeouts.submit),
            json_body=dict(payload),
            params=params,
            headers=sent,
            submit=True,
        )
        return _handle_from_submit(endpoint, reply, self.base_url)

    def handle_for(self, endpoint: str, request_id: str) -> RequestHandle:
        """A handle rebuilt from a recorded request id (fal-protocol §5 URL rules)."""
        base = request_url(self.base_url, endpoint, request_id)
        return RequestHandle(endpoint, request_id, f"{base}/status", base, f"{base}/cancel")

    async def status(self, handle: RequestHandle, *, logs: bool = False) -> Status:
        reply = await self._transport.send(
            "status",
            "GET",
            handle.status_url,
            timeout=self.timeouts.total(self.timeouts.status),
            params={"logs": "1" if logs else "0"},
            request_id=handle.request_id,
        )
        return parse_status(reply.body, handle.request_id)

    async def stream_status(
        self, handle: RequestHandle, *, logs: bool = False
    ) -> AsyncIterator[Status]:
        """Statuses as the server pushes them, ending with Completed.

        A stream that closes before COMPLETED raises TransientError: poll instead.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeouts.connect, sock_read=self.timeouts.stream_idle
        )
        url = f"{handle.status_url.rstrip('/')}/stream"
        params = {"logs": "1" if logs else "0"}
        async with self._transport.stream(
            "status stream", url, timeout=timeout, params=params, request_id=handle.request_id
        ) as (head, lines):
            if "text/event-stream" not in head.headers.get("content-type", ""):
                # Not a stream (a proxy, an old gateway): a JSON body is one status.
                body = b"".join([line async for line in lines])
                yield parse_status(json.loads(body or b"null"), handle.request_id)
                return
            async for data in iter_events(lines):
                status = parse_status(_json(data, handle.request_id), handle.request_id)
                yield status
                if isinstance(status, Completed):
                    return
        raise TransientError("status stream: closed before COMPLETED", request_id=handle.request_id)

    async def result(self, handle: RequestHandle) -> Result:
        """The bare model output and the units fal billed for it. A failed request raises its
        replayed error."""
        reply = await self._transport.send(
            "result",
            "GET",
            handle.response_url,
            timeout=self.timeouts.total(self.timeouts.result),
            request_id=handle.request_id,
        )
        if not isinstance(reply.body, dict):
            raise TransientError(
                "result: answer is not a JSON object", request_id=handle.request_id
            )
        units = parse_billable_units(reply.headers.get("x-fal-billable-units"))
        return Result(output=reply.body, billable_units=units)

    async def cancel(self, handle: RequestHandle) -> bool:
        """Ask fal to cancel. True when accepted (202); False when it had already completed.

        An unknown request raises NotFoundError.
        """
        try:
            await self._transport.send(
                "cancel",
                "PUT",
                handle.cancel_url,
                timeout=self.timeouts.total(self.timeouts.cancel),
                request_id=handle.request_id,
            )
        except PermanentError as exc:
            if isinstance(exc, NotFoundError):
                raise
            body_status = exc.detail.get("status") if isinstance(exc.detail, dict) else None
            if exc.status == 400 and body_status == "ALREADY_COMPLETED":
                return False
            raise
        return True


def tls_context(ca_bundle: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A verifying context: trusting the CAs in ``ca_bundle`` (a PEM file), else Python's
    default (the system's CAs, or SSL_CERT_FILE / SSL_CERT_DIR when set)."""
    if ca_bundle is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_bundle))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise InvalidInputError(f"ca_bundle {os.fspath(ca_bundle)}: not usable: {reason}") from None


def merge_headers(base: Mapping[str, str], extra: Mapping[str, str] | None) -> dict[str, str]:
    """``base`` with ``extra`` added; a name in ``extra`` replaces the same name in ``base``
    whatever its case. The key and the body's own headers cannot be given."""
    merged = dict(base)
    for name, value in (extra or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header {name!r}: names and values must be strings")
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} cannot be set as a platform header")
        for existing in [k for k in merged if k.lower() == name.lower()]:
            del merged[existing]
        merged[name] = value
    return merged


def _json(data: str, request_id: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise TransientError("status stream: an event is not JSON", request_id=request_id) from None


def _handle_from_submit(endpoint: str, reply: Reply, base_url: str) -> RequestHandle:
    body = reply.body if isinstance(reply.body, dict) else {}
    request_id = body.get("request_id") or reply.request_id
    if not isinstance(request_id, str) or not request_id:
        # The request may well be queued, but without an id it cannot be found again.
        raise TransientError(f"submit {endpoint}: answer has no request_id", status=reply.status)
    base = request_url(base_url, endpoint, request_id)
    return RequestHandle(
        endpoint=endpoint,
        request_id=request_id,
        status_url=str(body.get("status_url") or f"{base}/status"),
        response_url=str(body.get("response_url") or base),
        cancel_url=str(body.get("cancel_url") or f"{base}/cancel"),
        queue_position=_position(body.get("queue_position")),
    )


def _position(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and value >= 0 else None


def parse_status(body: Any, request_id: str | None = None) -> Status:
    """A status body as a typed value; liberal about missing optional keys."""
    if not isinstance(body, dict):
        raise TransientError("status: answer is not a JSON object", request_id=request_id)
    state = body.get("status")
    if state == "IN_QUEUE":
        return Queued(position=_position(body.get("queue_position")) or 0)
    logs = _parse_logs(body.get("logs"))
    if state == "IN_PROGRESS":
        return InProgress(logs=logs)
    if state == "COMPLETED":
        metrics = body.get("metrics")
        error, error_type = body.get("error"), body.get("error_type")
        return Completed(
            logs=logs,
            metrics=metrics if isinstance(metrics, dict) else {},
            error=str(error) if error is not None else None,
            error_type=str(error_type) if error_type is not None else None,
        )
    raise TransientError(f"status: unknown status {state!r}", request_id=request_id)


def _parse_logs(raw: Any) -> tuple[LogEntry, ...]:
    if not isinstance(raw, list):
        return ()
    entries = []
    for item in raw:
        if isinstance(item, dict):
            entries.append(
                LogEntry(
                    message=str(item.get("message", "")),
                    timestamp=item.get("timestamp"),
                    level=item.get("level"),
                    source=item.get("source"),
                )
            )
    return tuple(entries)
