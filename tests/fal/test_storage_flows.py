"""StorageClient's initiate flow (signed PUT) and its fallback chain: a host that refuses
(connection refused, 5xx) hands the upload to the next one (fal docs: fal-cdn, "Fallback")."""

import hashlib

import pytest

from batch.fal import Credentials, QueueClient, RateLimitedError, StorageClient, TransientError
from batch.fal.errors import PermanentError

KEY = "storage-test-key-0123456789"
DATA = b"\x89PNG fake image bytes"


def _token(base_url: str) -> dict:
    return {
        "token": "cdn-token-abc",
        "token_type": "Bearer",
        "base_url": base_url,
        "expires_at": "2999-01-01T00:00:00+00:00",
    }


async def _storage(client: QueueClient, rest_url: str, **options) -> StorageClient:
    return StorageClient(client.session, client.credentials, rest_url=rest_url, **options)


async def _signed_host(serve, kit):
    """A host that takes a PUT to a signed URL (no Authorization expected)."""
    return await serve({("PUT", "/upload/abc"): kit.Answer(200, text="")})


def _initiate_answer(kit, signed_url: str):
    return kit.Answer(
        200,
        {
            "upload_url": f"{signed_url}/upload/abc?X-Goog-Signature=s1",
            "file_url": "https://v3.fal.media/files/abc/cat.png",
        },
    )


async def test_initiate_flow_puts_to_the_signed_url_without_the_key(serve, kit):
    signed = await _signed_host(serve, kit)
    rest = await serve({("POST", "/storage/upload/initiate"): _initiate_answer(kit, signed.url)})
    async with QueueClient(base_url=rest.url, credentials=Credentials(KEY)) as client:
        storage = await _storage(client, rest.url, flows=["initiate"])
        url = await storage.upload(DATA, "image/png", file_name="cat.png")
    assert url == "https://v3.fal.media/files/abc/cat.png"
    (init,) = rest.calls("POST", "/storage/upload/initiate")
    assert init.param("storage_type") == "fal-cdn-v3"
    assert init.headers["authorization"] == f"Key {KEY}"
    assert init.json() == {"content_type": "image/png", "file_name": "cat.png"}
    (put,) = signed.calls("PUT", "/upload/abc")
    assert put.body == DATA
    assert put.headers["content-type"] == "image/png"
    assert put.param("X-Goog-Signature") == "s1"
    assert "authorization" not in put.headers
    assert rest.calls("POST", "/storage/auth/token") == []


async def test_default_is_cdn_first_then_initiate(serve, kit):
    routes = {}
    rest = await serve(routes)
    routes[("POST", "/storage/auth/token")] = kit.Answer(200, _token(rest.url))
    routes[("POST", "/files/upload")] = kit.Answer(200, {"access_url": "https://cdn/x.png"})
    async with QueueClient(base_url=rest.url, credentials=Credentials(KEY)) as client:
        storage = await _storage(client, rest.url)
        assert storage.flows == ("cdn", "initiate")
        assert await storage.upload(DATA, "image/png") == "https://cdn/x.png"
    assert storage.fallbacks == 0
    assert rest.calls("POST", "/storage/upload/initiate") == []
    (upload,) = rest.calls("POST", "/files/upload")
    assert upload.headers["authorization"] == "Bearer cdn-token-abc"


async def test_a_refused_cdn_host_falls_back_to_initiate(serve, kit):
    signed = await _signed_host(serve, kit)
    dead = f"http://127.0.0.1:{kit.closed_port()}"
    rest = await serve(
        {
            ("POST", "/storage/auth/token"): kit.Answer(200, _token(dead)),
            ("POST", "/storage/upload/initiate"): _initiate_answer(kit, signed.url),
        }
    )
    async with QueueClient(base_url=rest.url, credentials=Credentials(KEY)) as client:
        storage = await _storage(client, rest.url)
        url = await storage.upload(DATA, "image/png", sha256=hashlib.sha256(DATA).hexdigest())
    assert url == "https://v3.fal.media/files/abc/cat.png"
    assert storage.fallbacks == 1
    assert len(signed.calls("PUT", "/upload/abc")) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_5xx_cdn_host_hands_over_to_the_next_cdn_host(serve, kit, status):
    first = await serve({("POST", "/files/upload"): kit.Answer(status, {"detail": "down"})})
    second = await serve(
        {("POST", "/files/upload"): kit.Answer(200, {"access_url": "https://b/x"})}
    )
    rest = await serve({("POST", "/storage/auth/token"): kit.Answer(200, _token(first.url))})
    async with QueueClient(base_url=rest.url, credentials=Credentials(KEY)) as client:
        storage = await _storage(client, rest.url, cdn_fallback_urls=[second.url + "/"])
        assert await storage.upload(DATA, "image/png") == "https://b/x"
    assert len(first.calls("POST", "/files/upload")) == 1
    assert len(second.calls("POST", "/files/upload")) == 1
    assert rest.calls("POST", "/storage/upload/initiate") == []
    assert storage.fallbacks == 1


async def test_when_every_host_refuses_the_first_hosts_error_is_raised(serve, kit):
    """CDN 503, initiate not served (404): the CDN's transient 503, not the fallback's 404."""
    routes = {}
    rest = await serve(routes)
    routes[("POST", "/storage/auth/token")] = kit.Answer(200, _token(rest.url))
    routes[("POST", "/files/upload")] = kit.Answer(503, {"detail": "busy"})
    async with QueueClient(base_url=rest.url, credentials=Credentials(KEY)) as client:
        storage = await _storage(client, rest.url)
        with pytest.raises(TransientError) as caught:
            await storage.upload(DATA, "image/png")
    assert caught.value.status == 503
    assert len(rest.calls("POST", "/storage/upload/initiate")) == 1


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ((429, {"detail": "slow down"}), RateLimitedError),
        ((413, {"detail": "too large"}), PermanentError),
    ],
)
async def test_other_failures_of_the_first_host_are_raised_at_once(serve, kit, answer, error):
    routes = {}
    rest = await serve(routes)
    routes[("POST", "/storage/auth/token")] = kit.Answer(200, _token(rest.url))
    routes[("POST", "/files/upload")] = kit.Answer(*answer)
    async with QueueClient(base_url=rest.url, credentials=Credentials(KEY)) as client:
        storage = await _storage(client, rest.url)
        with pytest.raises(error):
            await storage.upload(DATA, "image/png")
    assert rest.calls("POST", "/storage/upload/initiate") == []
    assert storage.fallbacks == 0


async def test_multipart_moves_to_the_next_cdn_host_when_one_refuses(serve, kit):
    parts: dict[int, bytes] = {}

    async def part(request):
        number = int(request.path.rsplit("/", 1)[1])
        parts[number] = await request.read()
        return kit.Answer(200, {}, {"ETag": f'"e{number}"'}).response()

    first = await serve({("POST", "/files/upload/multipart"): kit.Answer(502, text="bad gateway")})
    second_routes = {
        ("PUT", "/f/big.bin/multipart/u1/1"): part,
        ("PUT", "/f/big.bin/multipart/u1/2"): part,
    }
    second = await serve(second_routes)
    second_routes[("POST", "/files/upload/multipart")] = kit.Answer(
        200, {"access_url": f"{second.url}/f/big.bin", "uploadId": "u1"}
    )
    second_routes[("POST", "/f/big.bin/multipart/u1/complete")] = kit.Answer(200, {})
    rest = await serve({("POST", "/storage/auth/token"): kit.Answer(200, _token(first.url))})
    data = bytes(range(256)) * 3
    async with QueueClient(base_url=rest.url, credentials=Credentials(KEY)) as client:
        storage = await _storage(
            client,
            rest.url,
            cdn_fallback_urls=[second.url],
            multipart_threshold=100,
            part_size=400,
        )
        url = await storage.upload(data, "application/octet-stream", file_name="big.bin")
    assert url == f"{second.url}/f/big.bin"
    assert b"".join(parts[n] for n in sorted(parts)) == data
    (complete,) = second.calls("POST", "/f/big.bin/multipart/u1/complete")
    assert complete.json() == {
        "parts": [{"partNumber": 1, "etag": '"e1"'}, {"partNumber": 2, "etag": '"e2"'}]
    }


def test_flows_are_checked():
    with pytest.raises(ValueError):
        StorageClient(None, Credentials(KEY), flows=[])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        StorageClient(None, Credentials(KEY), flows=["gcs"])  # type: ignore[arg-type, list-item]


async def test_a_fallback_host_that_refuses_the_token_hands_over_too(serve, kit):
    """First CDN host 503, the fallback CDN host 401 (even with a new token), then initiate."""
    signed = await _signed_host(serve, kit)
    first = await serve({("POST", "/files/upload"): kit.Answer(503, {"detail": "down"})})
    other = await serve({("POST", "/files/upload"): kit.Answer(401, {"detail": "bad token"})})
    rest = await serve(
        {
            ("POST", "/storage/auth/token"): kit.Answer(200, _token(first.url)),
            ("POST", "/storage/upload/initiate"): _initiate_answer(kit, signed.url),
        }
    )
    async with QueueClient(base_url=rest.url, credentials=Credentials(KEY)) as client:
        storage = await _storage(client, rest.url, cdn_fallback_urls=[other.url])
        assert await storage.upload(DATA, "image/png") == "https://v3.fal.media/files/abc/cat.png"
    assert storage.fallbacks == 2
    assert len(other.calls("POST", "/files/upload")) == 2  # once more with a new token
