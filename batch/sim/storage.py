"""The simulator's file storage: an in-memory store and fal's CDN v3 upload routes.

fal-protocol.md §7 describes what fal_client 1.0.3 does; this module serves exactly that:

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

The initiate flow (fal's docs and the JS client; fal_client's fallback): `POST
/storage/upload/initiate` with `Authorization: Key ...` and `{"file_name", "content_type"}`
answers a signed `upload_url` (no auth needed; it works `signed_url_ttl_s`) and the `file_url`
the file will have. `PUT upload_url` with the bytes stores them (the `Content-Type`, when sent,
must be the one initiated; a wrong or expired signature is a 403), and the file appears at
`file_url`; PUTting again replaces it. Any `storage_type` other than `fal-cdn-v3` is a 400
(`gcs` is dead on fal too).

Lifetimes (media-expiration docs): a file lives `media_expiration_s` (None: forever) unless the
upload (or the initiate call) carries `X-Fal-Object-Lifecycle-Preference` (or
`X-Fal-Object-Lifecycle`) `{"expiration_duration_seconds": N}` (`null`: forever). An expired
file answers 404, like one that never existed.

Who checks what:
- `POST /storage/auth/token` and `POST /storage/upload/initiate` need `Authorization: Key ...`.
  The core app's middleware checks it; this module does not look at `Key` credentials at all.
- The signed PUT needs no header: its URL's signature is checked here.
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
import heapq
import hmac
import json
import math
import mimetypes
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from batch.sim.clock import Clock

CDN_STORAGE_TYPE = "fal-cdn-v3"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_PART_NUMBER = 10_000
LIFECYCLE_HEADERS = ("X-Fal-Object-Lifecycle-Preference", "X-Fal-Object-Lifecycle")
SIGNED_PREFIX = "/storage/upload/signed/"
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


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


def _safe_name(name: str | None, content_type: str) -> str:
    """A URL-safe file name: the client's name cleaned up, or `file` plus the type's extension."""
    if name:
        cleaned = _UNSAFE_NAME_CHARS.sub("_", name.rsplit("/", 1)[-1]).strip("._")
        if cleaned:
            return cleaned[-100:]
    ext = mimetypes.guess_extension(content_type.split(";", 1)[0].strip()) or ".bin"
    return "file" + ext


@dataclass(slots=True)
class _File:
    data: bytes
    content_type: str
    expires_at: float | None = None  # clock seconds; None: never
    pinned: bool = False  # kept (hidden) after expiring, so it can be renewed


class FileStore:
    """Files kept in memory under fal-like keys (`b/0a1b2c3d/<random>_<name>`); thread-safe.

    A file may have an expiry on `clock` (epoch seconds): past it, `get` answers None and the
    file is dropped (lazily), unless it is pinned, which keeps its bytes hidden until `renew`
    or `delete`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._files: dict[str, _File] = {}
        self._reserved: set[str] = set()
        self._expiries: list[tuple[float, str]] = []  # heap: when to look at a file again
        self._total_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._files)

    def __repr__(self) -> str:
        return f"FileStore(files={len(self)}, total_bytes={self.total_bytes})"

    @property
    def total_bytes(self) -> int:
        return self._total_bytes

    def new_key(self, content_type: str, name: str | None = None) -> str:
        """A fresh unique key, reserved so no other upload takes it (multipart fills it later)."""
        safe = _safe_name(name, content_type)
        with self._lock:
            while True:
                key = f"b/{secrets.token_hex(4)}/{secrets.token_hex(8)}_{safe}"
                if key not in self._files and key not in self._reserved:
                    self._reserved.add(key)
                    return key

    def put(
        self,
        data: bytes,
        content_type: str,
        name: str | None = None,
        *,
        expires_at: float | None = None,
        pinned: bool = False,
    ) -> str:
        """Store `data` under a new key and return the key."""
        key = self.new_key(content_type, name)
        self.put_at(key, data, content_type, expires_at=expires_at, pinned=pinned)
        return key

    def put_at(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        expires_at: float | None = None,
        pinned: bool = False,
    ) -> None:
        """Store (or replace) the file at `key`, e.g. one reserved with `new_key`."""
        with self._lock:
            self._purge()
            old = self._files.get(key)
            if old is not None:
                self._total_bytes -= len(old.data)
            self._files[key] = _File(bytes(data), content_type, expires_at, pinned)
            self._reserved.discard(key)
            self._total_bytes += len(data)
            if expires_at is not None:
                heapq.heappush(self._expiries, (expires_at, key))

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The file's bytes and content type, or None if there is no such key (or it expired)."""
        with self._lock:
            found = self._files.get(key)
            if found is None:
                return None
            if found.expires_at is not None and self.clock() >= found.expires_at:
                if not found.pinned:
                    self._drop(key)
                return None
            return found.data, found.content_type

    def expires_at(self, key: str) -> float | None:
        """When the file expires (None: never); KeyError if there is no such file."""
        return self._files[key].expires_at

    def renew(self, key: str, expires_at: float | None) -> bool:
        """Give a file (expired but pinned, or still live) a new expiry; False if it is gone."""
        with self._lock:
            found = self._files.get(key)
            if found is None:
                return False
            found.expires_at = expires_at
            if expires_at is not None:
                heapq.heappush(self._expiries, (expires_at, key))
            return True

    def delete(self, key: str) -> bool:
        """Forget the file at `key`; True if it existed."""
        with self._lock:
            self._reserved.discard(key)
            return self._drop(key)

    def _drop(self, key: str) -> bool:
        old = self._files.pop(key, None)
        if old is None:
            return False
        self._total_bytes -= len(old.data)
        return True

    def _purge(self) -> None:
        """Drop unpinned files whose expiry has passed (called with the lock held)."""
        now = self.clock()
        while self._expiries and self._expiries[0][0] <= now:
            when, key = heapq.heappop(self._expiries)
            found = self._files.get(key)
            if found is not None and not found.pinned and found.expires_at == when:
                self._drop(key)


@dataclass
class _Multipart:
    key: str
    content_type: str
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)
    completed: bool = False
    expires_in: float | None = None  # the file's lifetime once complete


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


def _unprocessable(loc: list[str], msg: str, kind: str) -> web.Response:
    item = {"loc": ["body", *loc], "msg": msg, "type": kind}
    return web.json_response({"detail": [item]}, status=422)


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


@dataclass
class _Signed:
    key: str
    content_type: str
    signature: str
    expires_at: float  # the URL's end (clock seconds)
    file_expires_in: float | None  # the file's lifetime once PUT


class _Cdn:
    """The state behind the CDN routes: issued tokens, multipart uploads in progress and
    signed PUT URLs."""

    def __init__(
        self,
        store: FileStore,
        token_ttl_s: float,
        clock: Clock,
        *,
        media_expiration_s: float | None = None,
        signed_url_ttl_s: float = 3600.0,
        cdn_origin: Callable[[web.Request], str] | None = None,
    ) -> None:
        self.store = store
        self.token_ttl_s = token_ttl_s
        self.clock = clock
        self.media_expiration_s = media_expiration_s
        self.signed_url_ttl_s = signed_url_ttl_s
        self.cdn_origin = cdn_origin
        self.tokens: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self.uploads: dict[str, _Multipart] = {}  # uploadId -> upload
        self.signed: dict[str, _Signed] = {}  # signed upload id -> what it may store

    def _file_expiry(self, request: web.Request) -> float | None:
        ttl = lifecycle_ttl(request.headers, self.media_expiration_s)
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

    async def initiate(self, request: web.Request) -> web.Response:
        """`{file_name, content_type}` -> a signed PUT URL and the file's future URL."""
        if request.query.get("storage_type", CDN_STORAGE_TYPE) != CDN_STORAGE_TYPE:
            return _error(400, "Invalid storage type")
        try:
            body: Any = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return _unprocessable([], "Input should be a valid dictionary", "dict_type")
        for name in ("content_type", "file_name"):
            if not isinstance(body.get(name), str):
                return _unprocessable([name], "Field required", "missing")
        content_type, file_name = body["content_type"], body["file_name"]
        key = self.store.new_key(content_type, file_name)
        upload_id, signature = secrets.token_urlsafe(16), secrets.token_urlsafe(24)
        now = self.clock()
        ttl = lifecycle_ttl(request.headers, self.media_expiration_s)
        self.signed = {i: u for i, u in self.signed.items() if u.expires_at > now}
        self.signed[upload_id] = _Signed(
            key, content_type, signature, now + self.signed_url_ttl_s, ttl
        )
        origin = _origin(request)
        return web.json_response(
            {
                "upload_url": f"{origin}{SIGNED_PREFIX}{upload_id}?signature={signature}",
                "file_url": f"{origin}/files/{key}",
            }
        )

    async def signed_put(self, request: web.Request) -> web.Response:
        """The PUT to a signed URL: no auth header, the URL's signature is the permission."""
        found = self.signed.get(request.match_info["upload_id"])
        given = request.query.get("signature", "")
        if found is None or not hmac.compare_digest(given.encode(), found.signature.encode()):
            return _error(403, "Invalid signature")
        now = self.clock()
        if now >= found.expires_at:
            return _error(403, "Signed URL expired")
        sent_type = request.headers.get("Content-Type")
        if sent_type is not None and sent_type != found.content_type:
            return _error(403, "Content-Type does not match the signed upload")
        data = await request.read()
        expires_at = None if found.file_expires_in is None else now + found.file_expires_in
        self.store.put_at(found.key, data, found.content_type, expires_at=expires_at)
        return web.Response(status=200)

    async def create_multipart(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Invalid or expired upload token")
        content_type = request.headers.get("Content-Type", DEFAULT_CONTENT_TYPE)
        key = self.store.new_key(content_type, request.headers.get("X-Fal-File-Name"))
        upload_id = secrets.token_urlsafe(16)
        ttl = lifecycle_ttl(request.headers, self.media_expiration_s)
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
        signed_url_ttl_s=signed_url_ttl_s,
        cdn_origin=cdn_origin,
    )
    multipart = r"/files/{key:.+}/multipart/{upload_id:[^/]+}"
    return [
        web.post("/storage/auth/token", cdn.token),
        web.post("/storage/upload/initiate", cdn.initiate),
        web.put(SIGNED_PREFIX + "{upload_id}", cdn.signed_put),
        web.post("/files/upload", cdn.upload),
        web.post("/files/upload/multipart", cdn.create_multipart),
        web.put(multipart + r"/{part:\d+}", cdn.put_part),
        web.post(multipart + "/complete", cdn.complete),
        web.get("/files/{key:.+}", cdn.download),
    ]
