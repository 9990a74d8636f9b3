"""The simulator's initiate flow: signed PUT URLs into the file store (fal-protocol.md §7).

    POST /storage/upload/initiate?storage_type=fal-cdn-v3   -> {upload_url, file_url}
    PUT  /storage/upload/signed/{id}?signature=...          -> 200 (the signed PUT URL)

The initiate flow (fal's docs and the JS client; fal_client's fallback): `POST
/storage/upload/initiate` with `Authorization: Key ...` and `{"file_name", "content_type"}`
answers a signed `upload_url` (no auth needed; it works `url_ttl_s`) and the `file_url` the
file will have. `PUT upload_url` with the bytes stores them (the `Content-Type`, when sent, must
be the one initiated; a wrong or expired signature is a 403), and the file appears at
`file_url`; PUTting again replaces it. Any `storage_type` other than `fal-cdn-v3` is a 400
(`gcs` is dead on fal too).

The core app's middleware checks the `Key` on the initiate call; the signed PUT needs no header,
its URL's signature is checked here. `storage_routes` (batch.sim.storage) registers these routes
beside the CDN ones.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from batch.sim.clock import Clock
from batch.sim.filestore import FileStore

CDN_STORAGE_TYPE = "fal-cdn-v3"
SIGNED_PREFIX = "/storage/upload/signed/"


@dataclass
class _Signed:
    key: str
    content_type: str
    signature: str
    expires_at: float  # the URL's end (clock seconds)
    file_expires_in: float | None  # the file's lifetime once PUT


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


def _unprocessable(loc: list[str], msg: str, kind: str) -> web.Response:
    item = {"loc": ["body", *loc], "msg": msg, "type": kind}
    return web.json_response({"detail": [item]}, status=422)


class SignedUploads:
    """The state behind the initiate routes: the signed PUT URLs handed out and not expired.

    `file_ttl(headers)` is the lifetime (seconds; None: forever) of a file initiated with those
    request headers; signed URLs live `url_ttl_s` seconds of `clock`."""

    def __init__(
        self,
        store: FileStore,
        clock: Clock,
        *,
        url_ttl_s: float,
        file_ttl: Callable[[Mapping[str, str]], float | None],
    ) -> None:
        self.store = store
        self.clock = clock
        self.url_ttl_s = url_ttl_s
        self.file_ttl = file_ttl
        self.signed: dict[str, _Signed] = {}  # signed upload id -> what it may store

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/storage/upload/initiate", self.initiate),
            web.put(SIGNED_PREFIX + "{upload_id}", self.signed_put),
        ]

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
        ttl = self.file_ttl(request.headers)
        self.signed = {i: u for i, u in self.signed.items() if u.expires_at > now}
        self.signed[upload_id] = _Signed(key, content_type, signature, now + self.url_ttl_s, ttl)
        origin = str(request.url.origin())
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
