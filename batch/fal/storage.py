"""Files for fal: uploads through fal's storage API (fal-protocol.md §7), and data URIs.

`StorageClient` speaks two flows, tried in the order ``flows`` gives (default: CDN, then
initiate, as fal's fal-cdn page describes: "If the primary endpoint (v3.fal.media) is
unavailable, the SDK automatically falls back [...] to the REST API"). The CDN v3 flow:

1. a CDN token: ``POST {rest_url}/storage/auth/token?storage_type=fal-cdn-v3`` with the key,
   body ``{}`` → ``{token, token_type, base_url, expires_at}``; cached until ``expires_at``
   (less a margin), fetched again then, or once after an upload call answers 401;
2. files up to ``multipart_threshold`` (100 MiB): ``POST {base_url}/files/upload`` with
   ``Authorization: <token_type> <token>``, the content type and ``X-Fal-File-Name`` → the
   file's ``access_url``. Unlike fal_client, which hard-codes ``v3.fal.media``, the token's
   ``base_url`` is used, so a simulator (or a regional CDN) serves uploads too;
3. larger files, multipart: ``POST {base_url}/files/upload/multipart`` → ``{access_url,
   uploadId}``; ``PUT {access_url}/multipart/{uploadId}/{n}`` for parts of ``part_size``
   (10 MiB), ``part_concurrency`` at a time, each answering an ``ETag``; then
   ``POST {access_url}/multipart/{uploadId}/complete`` with ``{"parts": [{partNumber, etag}]}``.

The initiate flow (fal's JS client; fal_client's legacy "fal" repository):
``POST {rest_url}/storage/upload/initiate?storage_type=fal-cdn-v3`` with the key and body
``{"content_type", "file_name"}`` → ``{upload_url, file_url}``; then ``PUT upload_url`` with
the bytes and their content type, and no Authorization (the URL is signed) → ``file_url``.

The fallback chain: the CDN flow at the token's ``base_url``, then at each of
``cdn_fallback_urls`` (none by default), then the initiate flow. An upload moves to the next
host when one refuses: the connection is refused, or it answers 5xx; also when a fallback host
answers 4xx or refuses the credentials (it does not serve this flow). Any other failure (429,
a 4xx or a refused key from the first host, a lost connection, a certificate) is raised at
once. When every host has refused, the first host's error is raised. Files above
``multipart_threshold`` go in parts through the CDN hosts only (fal's initiate-multipart route
is not spoken); with no "cdn" flow they go to the initiate flow as one PUT.

One attempt per call, like `QueueClient`: failures are the same `FalError` tree, made by the
same `Transport`, and retrying is the caller's decision. The key goes only to ``rest_url``;
the CDN gets the token, a signed URL nothing. When the caller gives the content's sha256, the
bytes read are checked against it before anything is sent (before ``complete``, for
multipart): a file that changed since it was hashed raises `ContentChangedError` instead of
uploading other content. The requests of each flow are in `batch.fal.upload_flows`; this
module holds the token, the choice of flow and the fallback chain.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import mimetypes
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import unquote_to_bytes

import aiohttp

from batch.fal.auth import Credentials
from batch.fal.client import USER_AGENT
from batch.fal.errors import AuthError, ConnectError, FalError, PermanentError, TransientError
from batch.fal.transport import Transport
from batch.fal.upload_flows import CDN_STORAGE_TYPE as CDN_STORAGE_TYPE
from batch.fal.upload_flows import ContentChangedError as ContentChangedError
from batch.fal.upload_flows import cdn_multipart, cdn_single, initiate_and_put, source_name

DEFAULT_REST_URL = "https://rest.fal.ai"
DEFAULT_CDN_URL = "https://v3.fal.media"
UploadFlow = Literal["cdn", "initiate"]
DEFAULT_UPLOAD_FLOWS: tuple[UploadFlow, ...] = ("cdn", "initiate")
MULTIPART_THRESHOLD = 100 * 1024 * 1024
PART_SIZE = 10 * 1024 * 1024
UNKNOWN_EXPIRY_S = 600.0  # how long to keep a token whose answer has no readable expires_at

T = TypeVar("T")


@dataclass(frozen=True)
class CdnToken:
    """A CDN upload token and where to use it."""

    token: str
    token_type: str
    base_url: str
    expires_at: float  # epoch seconds
    fetched_at: float

    @property
    def header(self) -> str:
        return f"{self.token_type} {self.token}"

    def __repr__(self) -> str:
        return f"CdnToken(<hidden>, base_url={self.base_url!r}, expires_at={self.expires_at})"


@dataclass(frozen=True)
class StorageTimeouts:
    """Per-call limits in seconds."""

    connect: float = 10.0
    token: float = 30.0
    upload: float = 600.0  # one single upload (up to 100 MiB)
    part: float = 300.0  # one multipart part

    def total(self, seconds: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=seconds, sock_connect=self.connect)


class StorageClient:
    """Uploads to fal's CDN over a shared aiohttp session (e.g. `QueueClient.session`)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        *,
        rest_url: str = DEFAULT_REST_URL,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        part_concurrency: int = 4,
        token_margin: float = 60.0,
        timeouts: StorageTimeouts | None = None,
        clock: Callable[[], float] = time.time,
        flows: Sequence[UploadFlow] = DEFAULT_UPLOAD_FLOWS,
        cdn_fallback_urls: Sequence[str] = (),
    ) -> None:
        """``flows``: the upload flows to try, in order ("cdn", "initiate"); ``cdn_fallback_urls``:
        CDN hosts to try after the token's ``base_url`` (e.g. ``https://v3.fal.media``)."""
        if part_size < 1 or multipart_threshold < 0 or part_concurrency < 1:
            raise ValueError("part_size and part_concurrency must be positive")
        if not flows or any(flow not in ("cdn", "initiate") for flow in flows):
            raise ValueError(f"flows must name 'cdn' and/or 'initiate', not {list(flows)!r}")
        self.flows: tuple[UploadFlow, ...] = tuple(dict.fromkeys(flows))
        self.cdn_fallback_urls = tuple(dict.fromkeys(u.rstrip("/") for u in cdn_fallback_urls))
        self.rest_url = rest_url.rstrip("/")
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.part_concurrency = part_concurrency
        self.token_margin = token_margin
        self.timeouts = timeouts or StorageTimeouts()
        self._clock = clock
        self._transport = Transport(session, credentials.header, USER_AGENT)
        self._unsigned = Transport(session, None, USER_AGENT)  # for signed URLs: no key
        self._token: CdnToken | None = None
        self._token_lock = asyncio.Lock()
        self.token_requests = 0
        self.fallbacks = 0  # times an upload moved on to the next host

    # --- token ---------------------------------------------------------------------------

    async def token(self, *, stale: CdnToken | None = None) -> CdnToken:
        """The cached token while it is valid, else a new one. ``stale``: a token the CDN
        refused; it is replaced unless another caller has replaced it already."""
        async with self._token_lock:
            current = self._token
            if current is not None and current is not stale and self._fresh(current):
                return current
            self._token = await self._fetch_token()
            return self._token

    def _fresh(self, token: CdnToken) -> bool:
        margin = min(self.token_margin, (token.expires_at - token.fetched_at) * 0.1)
        return self._clock() < token.expires_at - margin

    async def _fetch_token(self) -> CdnToken:
        self.token_requests += 1
        reply = await self._transport.send(
            "storage token",
            "POST",
            f"{self.rest_url}/storage/auth/token",
            timeout=self.timeouts.total(self.timeouts.token),
            json_body={},
            params={"storage_type": CDN_STORAGE_TYPE},
        )
        body = reply.body if isinstance(reply.body, dict) else {}
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise TransientError("storage token: answer has no token", status=reply.status)
        now = self._clock()
        base_url = body.get("base_url")
        return CdnToken(
            token=token,
            token_type=str(body.get("token_type") or "Bearer"),
            base_url=(
                base_url if isinstance(base_url, str) and base_url else DEFAULT_CDN_URL
            ).rstrip("/"),
            expires_at=_parse_expiry(body.get("expires_at"), now),
            fetched_at=now,
        )

    async def _with_token(self, call: Callable[[CdnToken], Awaitable[T]]) -> T:
        """``call(token)``; on a 401/403, once more with a new token."""
        token = await self.token()
        try:
            return await call(token)
        except AuthError:
            token = await self.token(stale=token)
            return await call(token)

    # --- uploads -------------------------------------------------------------------------

    async def upload(
        self,
        source: bytes | str | os.PathLike[str],
        content_type: str,
        *,
        file_name: str | None = None,
        sha256: str | None = None,
    ) -> str:
        """Upload bytes or a file; returns its URL. Above ``multipart_threshold`` bytes a file
        goes in parts, read from disk one part at a time."""
        if isinstance(source, bytes):
            size = len(source)
        else:
            size = (await asyncio.to_thread(os.stat, source)).st_size
        cdn_hosts = self._cdn_hosts()
        if size > self.multipart_threshold and cdn_hosts:
            return await self._first_to_take(
                [
                    self._cdn_attempt(
                        host,
                        lambda t, h: self._multipart(t, h, source, content_type, file_name, sha256),
                    )
                    for host in cdn_hosts
                ]
            )
        data = source if isinstance(source, bytes) else await asyncio.to_thread(_read, source)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ContentChangedError(f"{source_name(source)}: content changed since it was hashed")
        attempts: list[Callable[[], Awaitable[str]]] = []
        for flow in self.flows:
            if flow == "cdn":
                attempts += [
                    self._cdn_attempt(
                        host, lambda t, h: self._single(t, h, data, content_type, file_name)
                    )
                    for host in cdn_hosts
                ]
            else:
                attempts.append(lambda: self._initiate(data, content_type, file_name))
        return await self._first_to_take(attempts)

    def _cdn_hosts(self) -> list[str | None]:
        """The CDN hosts to try, None standing for the token's ``base_url``."""
        return [None, *self.cdn_fallback_urls] if "cdn" in self.flows else []

    def _cdn_attempt(
        self, host: str | None, call: Callable[[CdnToken, str], Awaitable[str]]
    ) -> Callable[[], Awaitable[str]]:
        return lambda: self._with_token(lambda t: call(t, host or t.base_url))

    async def _first_to_take(self, attempts: list[Callable[[], Awaitable[str]]]) -> str:
        """The first attempt's answer that succeeds; see the module's fallback chain."""
        first: FalError | None = None
        for number, attempt in enumerate(attempts):
            try:
                return await attempt()
            except FalError as exc:
                fallback_refused = number > 0 and isinstance(exc, PermanentError | AuthError)
                moves_on = _refused(exc) or fallback_refused
                if not moves_on:
                    raise
                first = first or exc
                if number + 1 < len(attempts):
                    self.fallbacks += 1
        assert first is not None, "no upload flow to try"
        raise first

    async def _single(
        self, token: CdnToken, host: str, data: bytes, content_type: str, file_name: str | None
    ) -> str:
        return await cdn_single(
            self._transport,
            host,
            authorization=token.header,
            data=data,
            content_type=content_type,
            file_name=file_name,
            timeout=self.timeouts.total(self.timeouts.upload),
        )

    async def _initiate(self, data: bytes, content_type: str, file_name: str | None) -> str:
        """The initiate flow: a signed URL from the REST API, then one PUT to it."""
        return await initiate_and_put(
            self._transport,
            self._unsigned,
            self.rest_url,
            data=data,
            content_type=content_type,
            file_name=file_name,
            call_timeout=self.timeouts.total(self.timeouts.token),
            put_timeout=self.timeouts.total(self.timeouts.upload),
        )

    async def _multipart(
        self,
        token: CdnToken,
        host: str,
        source: bytes | str | os.PathLike[str],
        content_type: str,
        file_name: str | None,
        sha256: str | None,
    ) -> str:
        return await cdn_multipart(
            self._transport,
            host,
            source,
            authorization=token.header,
            content_type=content_type,
            file_name=file_name,
            sha256=sha256,
            part_size=self.part_size,
            part_concurrency=self.part_concurrency,
            call_timeout=self.timeouts.total(self.timeouts.token),
            part_timeout=self.timeouts.total(self.timeouts.part),
        )


def _refused(exc: FalError) -> bool:
    """A host that turned the request away: no connection, or a 5xx answer."""
    if isinstance(exc, ConnectError):
        return True
    return isinstance(exc, TransientError) and exc.status is not None and exc.status >= 500


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _parse_expiry(value: Any, now: float) -> float:
    """``expires_at`` (ISO 8601, as fal sends it) as epoch seconds; soon, if unreadable."""
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return now + UNKNOWN_EXPIRY_S
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    return now + UNKNOWN_EXPIRY_S


# --- data URIs -----------------------------------------------------------------------------


def encode_data_uri(data: bytes, content_type: str) -> str:
    """`data:<content_type>;base64,<b64>`, as fal_client's `encode` makes it."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def encode_file(path: str | Path) -> str:
    """A file as a data URI, its MIME type guessed from the name (octet-stream otherwise)."""
    content_type = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    return encode_data_uri(Path(path).read_bytes(), content_type)


def decode_data_uri(uri: str) -> tuple[bytes, str]:
    """(bytes, content type) of a data URI; ValueError when it is not one."""
    if not uri.startswith("data:") or "," not in uri:
        raise ValueError("not a data URI")
    header, payload = uri[5:].split(",", 1)
    params = header.split(";")
    content_type = params[0] or "text/plain"
    if "base64" in params[1:]:
        try:
            return base64.b64decode(payload, validate=False), content_type
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"bad base64 in data URI: {exc}") from None
    return unquote_to_bytes(payload), content_type
