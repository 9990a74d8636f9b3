"""The simulator's file storage: fal's CDN v3 upload routes over the in-memory `FileStore`.

fal-protocol.md §7 describes what fal_client 1.0.3 does; these routes serve exactly that (the
store itself is `batch.sim.filestore`, re-exported here):

    POST /storage/auth/token?storage_type=fal-cdn-v3        -> {token, token_type, base_url, ...}
    POST /files/upload                                      -> {access_url, uploaded}
    POST /files/upload/multipart                            -> {access_url, uploadId}
    PUT  /files/{key}/multipart/{uploadId}/{partNumber}     -> 200, `ETag` response header
    POST /files/{key}/multipart/{uploadId}/complete         -> {access_url}
    POST /storage/upload/initiate?storage_type=fal-cdn-v3   -> {upload_url, file_url}
    PUT  /storage/upload/signed/{id}?signature=...          -> 200 (the signed PUT URL)
    GET  /files/{key}                                       -> the bytes, with their content type

Every public URL is built from the request's own origin, so the routes work on any port, behind
any host name and over https; `base_url` in the token answer is that origin too, unless the
simulator serves its CDN on a host of its own (`cdn_origin`), which the token then names.

The initiate flow (`POST /storage/upload/initiate`, then a PUT to the signed `upload_url` it
answers, which works `signed_url_ttl_s`) is served by `batch.sim.storage_initiate`, whose routes
`storage_routes` registers with these.

Lifetimes (media-expiration docs): a file lives `media_expiration_s` (None: forever) unless the
upload (or the initiate call) carries `X-Fal-Object-Lifecycle-Preference` (or
`X-Fal-Object-Lifecycle`) `{"expiration_duration_seconds": N}` (`null`: forever). An expired
file answers 404, like one that never existed.

Who checks what:
- `POST /storage/auth/token` and `POST /storage/upload/initiate` need `Authorization: Key ...`.
  The core app's middleware checks it; this module does not look at `Key` credentials at all.
- The signed PUT needs no header: its URL's signature is checked (in `storage_initiate`).
- The upload routes (`/files/upload`, `/files/upload/multipart`, the part PUTs and `complete`)
  need `Authorization: Bearer <token>` with a token issued here and not yet expired; this module
  checks that and answers 401 otherwise. The core must not demand a `Key` on them.
- `GET /files/{key}` is public, like fal's CDN.

Nothing here counts requests or injects faults: the core's middleware does that for every route.
Upload sizes are limited only by the app's `client_max_size`, which the core sets.

Multipart: the file's key is fixed when the upload is created, but the file appears at its
`access_url` only after `complete`. `complete` accepts the parts in any list order (fal_client's
async upload appends them as they finish), but they must number 1..N without gaps or repeats
and each etag must match the one the part PUT answered with; anything else is a 400. Repeating
a successful `complete` answers the same `access_url` again, so a client retry is harmless.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from batch.sim.clock import Clock
from batch.sim.filestore import FileStore as FileStore
from batch.sim.storage_initiate import CDN_STORAGE_TYPE as CDN_STORAGE_TYPE
from batch.sim.storage_initiate import SIGNED_PREFIX as SIGNED_PREFIX
from batch.sim.storage_initiate import SignedUploads

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_PART_NUMBER = 10_000
LIFECYCLE_HEADERS = ("X-Fal-Object-Lifecycle-Preference", "X-Fal-Object-Lifecycle")


def lifecycle_ttl(headers: Mapping[str, str], default: float | None) -> float | None:
    """Seconds a file made by this request lives: `expiration_duration_seconds` of its lifecycle
    header (null: forever), or `default` when the header is absent or unreadable."""
    for name in LIFECYCLE_HEADERS:
        text = headers.get(name)
        if text is None:
            continue
        try:
            value: Any = json.loads(text)
        except ValueError:
            return default
        if not isinstance(value, dict) or "expiration_duration_seconds" not in value:
            return default
        seconds = value["expiration_duration_seconds"]
        if seconds is None:
            return None
        number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if number and seconds > 0 and math.isfinite(seconds):
            return float(seconds)
        return default
    return default


@dataclass
class _Multipart:
    key: str
    content_type: str
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)
    completed: bool = False
    expires_in: float | None = None  # the file's lifetime once complete


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def _parse_parts(body: Any) -> list[tuple[int, str]] | None:
    """`{"parts": [{"partNumber": 1, "etag": "..."}, ...]}` -> [(1, "..."), ...], or None."""
    if not isinstance(body, dict) or not isinstance(body.get("parts"), list):
        return None
    parsed: list[tuple[int, str]] = []
    for item in body["parts"]:
        if not isinstance(item, dict):
            return None
        number, etag = item.get("partNumber"), item.get("etag")
        if type(number) is not int or not isinstance(etag, str):
            return None
        parsed.append((number, etag))
    return parsed


class _Cdn:
    """The state behind the CDN routes: issued tokens and multipart uploads in progress."""

    def __init__(
        self,
        store: FileStore,
        token_ttl_s: float,
        clock: Clock,
        *,
        media_expiration_s: float | None = None,
        cdn_origin: Callable[[web.Request], str] | None = None,
    ) -> None:
        self.store = store
        self.token_ttl_s = token_ttl_s
        self.clock = clock
        self.media_expiration_s = media_expiration_s
        self.cdn_origin = cdn_origin
        self.tokens: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self.uploads: dict[str, _Multipart] = {}  # uploadId -> upload

    def file_ttl(self, headers: Mapping[str, str]) -> float | None:
        """A new file's lifetime in seconds (None: forever), given its request's headers."""
        return lifecycle_ttl(headers, self.media_expiration_s)

    def _file_expiry(self, request: web.Request) -> float | None:
        ttl = self.file_ttl(request.headers)
        return None if ttl is None else self.clock() + ttl

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expiry = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        return expiry is not None and self.clock() < expiry

    async def token(self, request: web.Request) -> web.Response:
        if request.query.get("storage_type") != CDN_STORAGE_TYPE:
            return _error(400, "Invalid storage type")
        now = self.clock()
        self.tokens = {t: exp for t, exp in self.tokens.items() if exp > now}
        token = secrets.token_urlsafe(32)
        self.tokens[token] = now + self.token_ttl_s
        return web.json_response(
            {
                "token": token,
                "token_type": "Bearer",
                "base_url": self.cdn_origin(request) if self.cdn_origin else _origin(request),
                "expires_at": _iso(now + self.token_ttl_s),
                "created_at": _iso(now),
            }
        )

    async def upload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Invalid or expired upload token")
        content_type = request.headers.get("Content-Type", DEFAULT_CONTENT_TYPE)
        data = await request.read()
        key = self.store.put(
            data,
            content_type,
            request.headers.get("X-Fal-File-Name"),
            expires_at=self._file_expiry(request),
        )
        access_url = f"{_origin(request)}/files/{key}"
        return web.json_response({"access_url": access_url, "uploaded": True})

    async def create_multipart(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Invalid or expired upload token")
        content_type = request.headers.get("Content-Type", DEFAULT_CONTENT_TYPE)
        key = self.store.new_key(content_type, request.headers.get("X-Fal-File-Name"))
        upload_id = secrets.token_urlsafe(16)
        ttl = self.file_ttl(request.headers)
        self.uploads[upload_id] = _Multipart(key=key, content_type=content_type, expires_in=ttl)
        return web.json_response(
            {"access_url": f"{_origin(request)}/files/{key}", "uploadId": upload_id}
        )

    def _find_upload(self, request: web.Request) -> _Multipart | web.Response:
        if not self._authorized(request):
            return _error(401, "Invalid or expired upload token")
        upload = self.uploads.get(request.match_info["upload_id"])
        if upload is None or upload.key != request.match_info["key"]:
            return _error(404, "Unknown multipart upload")
        return upload

    async def put_part(self, request: web.Request) -> web.Response:
        upload = self._find_upload(request)
        if isinstance(upload, web.Response):
            return upload
        number = int(request.match_info["part"])
        if not 1 <= number <= MAX_PART_NUMBER:
            return _error(400, f"partNumber must be between 1 and {MAX_PART_NUMBER}")
        if upload.completed:
            return _error(400, "Multipart upload already completed")
        data = await request.read()
        etag = _etag(data)
        upload.parts[number] = (data, etag)
        return web.Response(status=200, headers={"ETag": etag})

    async def complete(self, request: web.Request) -> web.Response:
        upload = self._find_upload(request)
        if isinstance(upload, web.Response):
            return upload
        access_url = f"{_origin(request)}/files/{upload.key}"
        if upload.completed:
            return web.json_response({"access_url": access_url})
        try:
            listed = _parse_parts(await request.json())
        except (json.JSONDecodeError, UnicodeDecodeError):
            listed = None
        if not listed:
            return _error(400, 'Body must be {"parts": [{"partNumber": n, "etag": "..."}, ...]}')
        listed.sort()
        if [number for number, _ in listed] != list(range(1, len(listed) + 1)):
            return _error(400, "Parts must be numbered 1..N without gaps or repeats")
        for number, etag in listed:
            stored = upload.parts.get(number)
            if stored is None:
                return _error(400, f"Part {number} was never uploaded")
            if etag.strip('"') != stored[1].strip('"'):
                return _error(400, f"ETag mismatch for part {number}")
        data = b"".join(upload.parts[number][0] for number, _ in listed)
        ttl = upload.expires_in
        expires_at = None if ttl is None else self.clock() + ttl
        self.store.put_at(upload.key, data, upload.content_type, expires_at=expires_at)
        upload.parts.clear()
        upload.completed = True
        return web.json_response({"access_url": access_url})

    async def download(self, request: web.Request) -> web.Response:
        found = self.store.get(request.match_info["key"])
        if found is None:
            return _error(404, "File not found")
        data, content_type = found
        return web.Response(body=data, headers={"Content-Type": content_type})


def storage_routes(
    store: FileStore,
    *,
    token_ttl_s: float = 30 * 24 * 3600,
    clock: Clock = time.time,
    media_expiration_s: float | None = None,
    signed_url_ttl_s: float = 3600.0,
    cdn_origin: Callable[[web.Request], str] | None = None,
) -> list[web.RouteDef]:
    """The CDN token, upload, initiate and download routes over `store` (see the module
    docstring).

    Tokens live `token_ttl_s` seconds of `clock` (epoch seconds; a `ManualClock` in tests),
    signed PUT URLs `signed_url_ttl_s`, uploaded files `media_expiration_s` (None: forever) unless
    their lifecycle header says otherwise. `cdn_origin(request)`, when given, is the `base_url`
    the token answer names (the CDN's own host)."""
    cdn = _Cdn(
        store,
        token_ttl_s,
        clock,
        media_expiration_s=media_expiration_s,
        cdn_origin=cdn_origin,
    )
    signed = SignedUploads(store, clock, url_ttl_s=signed_url_ttl_s, file_ttl=cdn.file_ttl)
    multipart = r"/files/{key:.+}/multipart/{upload_id:[^/]+}"
    return [
        web.post("/storage/auth/token", cdn.token),
        *signed.routes(),
        web.post("/files/upload", cdn.upload),
        web.post("/files/upload/multipart", cdn.create_multipart),
        web.put(multipart + r"/{part:\d+}", cdn.put_part),
        web.post(multipart + "/complete", cdn.complete),
        web.get("/files/{key:.+}", cdn.download),
    ]
