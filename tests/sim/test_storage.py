"""The simulator's CDN storage routes, over real sockets (fal-protocol.md §7)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from batch.sim import ManualClock
from batch.sim.storage import FileStore, storage_routes

SAMPLES = Path("/work/shared/data/sample-images")
KEY_RE = re.compile(r"^b/[0-9a-f]{8}/[0-9a-f]{16}_[A-Za-z0-9._-]+$")

Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an app with only the storage routes on 127.0.0.1:0; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(store: FileStore | None = None, **kwargs: Any) -> str:
        app = web.Application()
        app.add_routes(storage_routes(store if store is not None else FileStore(), **kwargs))
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_token(http: aiohttp.ClientSession, base: str) -> str:
    url = f"{base}/storage/auth/token?storage_type=fal-cdn-v3"
    async with http.post(url, json={}) as resp:
        assert resp.status == 200
        body = await resp.json()
    return f"{body['token_type']} {body['token']}"


async def create_multipart(
    http: aiohttp.ClientSession, base: str, auth: str, content_type: str = "image/jpeg"
) -> tuple[str, str]:
    headers = {"Authorization": auth, "Content-Type": content_type, "X-Fal-File-Name": "big.jpg"}
    async with http.post(f"{base}/files/upload/multipart", headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    return body["access_url"], body["uploadId"]


async def put_part(
    http: aiohttp.ClientSession, access_url: str, upload_id: str, auth: str, n: int, data: bytes
) -> str:
    url = f"{access_url}/multipart/{upload_id}/{n}"
    async with http.put(url, data=data, headers={"Authorization": auth}) as resp:
        assert resp.status == 200
        return resp.headers["ETag"]


async def test_token_answer_has_fal_shape(serve: Serve, http: aiohttp.ClientSession) -> None:
    """The token answer carries a Bearer token, this server's origin and a ~30-day expiry."""
    base = await serve()
    url = f"{base}/storage/auth/token?storage_type=fal-cdn-v3"
    async with http.post(url, json={}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert set(body) == {"token", "token_type", "base_url", "expires_at", "created_at"}
    assert body["token_type"] == "Bearer"
    assert len(body["token"]) >= 32
    assert body["base_url"] == base
    assert body["expires_at"].endswith("+00:00")
    expires = datetime.fromisoformat(body["expires_at"])
    created = datetime.fromisoformat(body["created_at"])
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)
    assert expires - created == timedelta(days=30)


@pytest.mark.parametrize("query", ["?storage_type=gcs", ""])
async def test_other_storage_type_is_400(
    serve: Serve, http: aiohttp.ClientSession, query: str
) -> None:
    """Only fal-cdn-v3 tokens exist; anything else is fal's 400 'Invalid storage type'."""
    base = await serve()
    async with http.post(f"{base}/storage/auth/token{query}", json={}) as resp:
        assert resp.status == 400
        assert await resp.json() == {"detail": "Invalid storage type"}


@pytest.mark.parametrize("auth", [None, "Bearer not-a-token", "Key some-fal-key"])
async def test_upload_without_valid_token_is_401(
    serve: Serve, http: aiohttp.ClientSession, auth: str | None
) -> None:
    """Uploads need a Bearer token this server issued; a fal Key is not enough."""
    store = FileStore()
    base = await serve(store)
    headers = {"Content-Type": "image/png"} | ({"Authorization": auth} if auth else {})
    async with http.post(f"{base}/files/upload", data=b"x", headers=headers) as resp:
        assert resp.status == 401
    async with http.post(f"{base}/files/upload/multipart", headers=headers) as resp:
        assert resp.status == 401
    assert len(store) == 0


async def test_expired_token_is_401(serve: Serve, http: aiohttp.ClientSession) -> None:
    """A token past its expires_at no longer authorizes uploads."""
    base = await serve(token_ttl_s=0)
    auth = await get_token(http, base)
    headers = {"Authorization": auth, "Content-Type": "image/png"}
    async with http.post(f"{base}/files/upload", data=b"x", headers=headers) as resp:
        assert resp.status == 401


async def test_token_authorizes_until_its_ttl_on_the_clock(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    """A token works until token_ttl_s have passed on the routes' clock, then answers 401."""
    clock = ManualClock()
    base = await serve(token_ttl_s=60, clock=clock)
    auth = await get_token(http, base)
    headers = {"Authorization": auth, "Content-Type": "image/png"}
    clock.advance(59.5)
    async with http.post(f"{base}/files/upload", data=b"x", headers=headers) as resp:
        assert resp.status == 200
    clock.advance(0.5)
    async with http.post(f"{base}/files/upload", data=b"x", headers=headers) as resp:
        assert resp.status == 401
    async with http.post(f"{base}/files/upload/multipart", headers=headers) as resp:
        assert resp.status == 401


async def test_single_upload_round_trip(serve: Serve, http: aiohttp.ClientSession) -> None:
    """An uploaded file is served back byte for byte, with its content type, at access_url."""
    store = FileStore()
    base = await serve(store)
    auth = await get_token(http, base)
    data = (SAMPLES / "chelsea.jpg").read_bytes()
    headers = {"Authorization": auth, "Content-Type": "image/jpeg", "X-Fal-File-Name": "my cat.jpg"}
    async with http.post(f"{base}/files/upload", data=data, headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["uploaded"] is True
    assert body["access_url"].startswith(f"{base}/files/b/")
    assert body["access_url"].endswith("_my_cat.jpg")
    async with http.get(body["access_url"]) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert await resp.read() == data
    assert len(store) == 1
    assert store.total_bytes == len(data)


async def test_multipart_three_parts_round_trip(serve: Serve, http: aiohttp.ClientSession) -> None:
    """Parts PUT in any order and listed in any order complete into the concatenated file."""
    base = await serve()
    auth = await get_token(http, base)
    data = (SAMPLES / "astronaut.jpg").read_bytes()
    chunks = [data[:10_000], data[10_000:20_000], data[20_000:]]
    access_url, upload_id = await create_multipart(http, base, auth)
    assert access_url.startswith(f"{base}/files/b/")
    etags = {}
    for n in (3, 1, 2):
        etags[n] = await put_part(http, access_url, upload_id, auth, n, chunks[n - 1])
    assert len(set(etags.values())) == 3
    async with http.get(access_url) as resp:
        assert resp.status == 404  # not visible before complete
    parts = [{"partNumber": n, "etag": etags[n]} for n in (2, 3, 1)]
    complete_url = f"{access_url}/multipart/{upload_id}/complete"
    for _ in range(2):  # a retried complete answers the same
        body = {"parts": parts}
        async with http.post(complete_url, json=body, headers={"Authorization": auth}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"access_url": access_url}
    async with http.get(access_url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert await resp.read() == data


@pytest.mark.parametrize(
    "parts",
    [
        [(1, "bad"), (2, None), (3, None)],  # wrong etag
        [(1, None), (3, None)],  # gap
        [(1, None), (1, None), (2, None)],  # repeat
        [(1, None), (2, None), (3, None), (4, '"0"')],  # never uploaded
        [],  # nothing listed
    ],
)
async def test_multipart_complete_mismatch_is_400(
    serve: Serve, http: aiohttp.ClientSession, parts: list[tuple[int, str | None]]
) -> None:
    """complete refuses wrong etags, gaps, repeats and unknown parts; no file appears."""
    base = await serve()
    auth = await get_token(http, base)
    access_url, upload_id = await create_multipart(http, base, auth)
    etags = {}
    for n in (1, 2, 3):
        etags[n] = await put_part(http, access_url, upload_id, auth, n, bytes([n]) * 100)
    body = {"parts": [{"partNumber": n, "etag": e or etags[n]} for n, e in parts]}
    url = f"{access_url}/multipart/{upload_id}/complete"
    async with http.post(url, json=body, headers={"Authorization": auth}) as resp:
        assert resp.status == 400
        assert "detail" in await resp.json()
    async with http.get(access_url) as resp:
        assert resp.status == 404


async def test_multipart_unknown_upload_is_404(serve: Serve, http: aiohttp.ClientSession) -> None:
    """A part PUT for an uploadId this server never issued (or another key's) is a 404."""
    base = await serve()
    auth = await get_token(http, base)
    access_url, upload_id = await create_multipart(http, base, auth)
    other_url, _ = await create_multipart(http, base, auth)
    for url in (f"{access_url}/multipart/nope/1", f"{other_url}/multipart/{upload_id}/1"):
        async with http.put(url, data=b"x", headers={"Authorization": auth}) as resp:
            assert resp.status == 404


async def test_unknown_file_is_404(serve: Serve, http: aiohttp.ClientSession) -> None:
    """GET of a key nobody uploaded is a 404 with a JSON detail."""
    base = await serve()
    async with http.get(f"{base}/files/b/00000000/nothing_here.png") as resp:
        assert resp.status == 404
        assert await resp.json() == {"detail": "File not found"}


async def test_fal_client_multipart_upload_works(serve: Serve) -> None:
    """fal_client 1.0.3's own multipart uploader (token, create, parallel parts, complete)."""
    httpx = pytest.importorskip("httpx")
    from fal_client.auth import AuthCredentials
    from fal_client.client import AsyncCDNTokenManager, AsyncMultipartUpload

    store = FileStore()
    base = await serve(store)
    manager = AsyncCDNTokenManager(AuthCredentials("Key", "sim-key"))
    manager._url = f"{base}/storage/auth/token?storage_type=fal-cdn-v3"
    data = (SAMPLES / "coffee.jpg").read_bytes()
    async with httpx.AsyncClient() as client:
        url = await AsyncMultipartUpload.save(
            client=client,
            token_manager=manager,
            file_name="coffee.jpg",
            data=data,
            content_type="image/jpeg",
            chunk_size=4096,
        )
    assert url.startswith(f"{base}/files/")
    assert store.get(url.removeprefix(f"{base}/files/")) == (data, "image/jpeg")


def test_file_store_keys_and_accounting() -> None:
    """Keys are unique, fal-like and URL-safe; delete and total_bytes keep count."""
    store = FileStore()
    keys = [store.put(b"abc", "image/png", "a photo/../é.png") for _ in range(50)]
    assert len(set(keys)) == 50
    assert all(KEY_RE.match(key) for key in keys)
    assert store.put(b"x", "image/jpeg").endswith("_file.jpg")
    assert (len(store), store.total_bytes) == (51, 151)
    assert store.get(keys[0]) == (b"abc", "image/png")
    assert store.delete(keys[0]) is True
    assert store.delete(keys[0]) is False
    assert store.get(keys[0]) is None
    assert (len(store), store.total_bytes) == (50, 148)
