"""The simulator's file storage: an in-memory store and fal's CDN v3 upload routes.

fal-protocol.md §7 describes what fal_client 1.0.3 does; this module serves exactly that:

    POST /storage/auth/token?storage_type=fal-cdn-v3        -> {token, token_type, base_url, ...}
    POST /files/upload                                      -> {access_url, uploaded}
    POST /files/upload/multipart                            -> {access_url, uploadId}
    PUT  /files/{key}/multipart/{uploadId}/{partNumber}     -> 200, `ETag` response header
    POST /files/{key}/multipart/{uploadId}/complete         -> {access_url}
    GET  /files/{key}                                       -> the bytes, with their content type

Every public URL is built from the request's own origin, so the routes work on any port, behind
any host name and over https; `base_url` in the token answer is that origin too.

Who checks what:
- `POST /storage/auth/token` needs `Authorization: Key ...`. The core app's middleware checks it;
  this module does not look at `Key` credentials at all.
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
import mimetypes
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from batch.sim.clock import Clock

CDN_STORAGE_TYPE = "fal-cdn-v3"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_PART_NUMBER = 10_000
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(name: str | None, content_type: str) -> str:
    """A URL-safe file name: the client's name cleaned up, or `file` plus the type's extension."""
    if name:
        cleaned = _UNSAFE_NAME_CHARS.sub("_", name.rsplit("/", 1)[-1]).strip("._")
        if cleaned:
            return cleaned[-100:]
    ext = mimetypes.guess_extension(content_type.split(";", 1)[0].strip()) or ".bin"
    return "file" + ext


class FileStore:
    """Files kept in memory under fal-like keys (`b/0a1b2c3d/<random>_<name>`); thread-safe."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, str]] = {}
        self._reserved: set[str] = set()
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

    def put(self, data: bytes, content_type: str, name: str | None = None) -> str:
        """Store `data` under a new key and return the key."""
        key = self.new_key(content_type, name)
        self.put_at(key, data, content_type)
        return key

    def put_at(self, key: str, data: bytes, content_type: str) -> None:
        """Store (or replace) the file at `key`, e.g. one reserved with `new_key`."""
        with self._lock:
            old = self._files.get(key)
            if old is not None:
                self._total_bytes -= len(old[0])
            self._files[key] = (bytes(data), content_type)
            self._reserved.discard(key)
            self._total_bytes += len(data)

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The file's bytes and content type, or None if there is no such key."""
        return self._files.get(key)

    def delete(self, key: str) -> bool:
        """Forget the file at `key`; True if it existed."""
        with self._lock:
            self._reserved.discard(key)
            old = self._files.pop(key, None)
            if old is None:
                return False
            self._total_bytes -= len(old[0])
            return True


@dataclass
class _Multipart:
    key: str
    content_type: str
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)
    completed: bool = False


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

    def __init__(self, store: FileStore, token_ttl_s: float, clock: Clock) -> None:
        self.store = store
        self.token_ttl_s = token_ttl_s
        self.clock = clock
        self.tokens: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self.uploads: dict[str, _Multipart] = {}  # uploadId -> upload

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
                "base_url": _origin(request),
                "expires_at": _iso(now + self.token_ttl_s),
                "created_at": _iso(now),
            }
        )

    async def upload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Invalid or expired upload token")
        content_type = request.headers.get("Content-Type", DEFAULT_CONTENT_TYPE)
        data = await request.read()
        key = self.store.put(data, content_type, request.headers.get("X-Fal-File-Name"))
        access_url = f"{_origin(request)}/files/{key}"
        return web.json_response({"access_url": access_url, "uploaded": True})

    async def create_multipart(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Invalid or expired upload token")
        content_type = request.headers.get("Content-Type", DEFAULT_CONTENT_TYPE)
        key = self.store.new_key(content_type, request.headers.get("X-Fal-File-Name"))
        upload_id = secrets.token_urlsafe(16)
        self.uploads[upload_id] = _Multipart(key=key, content_type=content_type)
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
        self.store.put_at(upload.key, data, upload.content_type)
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
    store: FileStore, *, token_ttl_s: float = 30 * 24 * 3600, clock: Clock = time.time
) -> list[web.RouteDef]:
    """The CDN token, upload and download routes over `store` (see the module docstring).

    Tokens live `token_ttl_s` seconds of `clock` (epoch seconds; a `ManualClock` in tests)."""
    cdn = _Cdn(store, token_ttl_s, clock)
    multipart = r"/files/{key:.+}/multipart/{upload_id:[^/]+}"
    return [
        web.post("/storage/auth/token", cdn.token),
        web.post("/files/upload", cdn.upload),
        web.post("/files/upload/multipart", cdn.create_multipart),
        web.put(multipart + r"/{part:\d+}", cdn.put_part),
        web.post(multipart + "/complete", cdn.complete),
        web.get("/files/{key:.+}", cdn.download),
    ]
