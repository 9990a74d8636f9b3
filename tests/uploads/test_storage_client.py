"""`StorageClient` against the simulator's storage endpoints (fal-protocol.md §7), over sockets."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from batch.fal import AuthError, ContentChangedError, Credentials, StorageClient, TransientError
from batch.fal.errors import ConnectError, RateLimitedError
from batch.sim import FaultPlan, FaultRule, ManualClock


def image_bytes(color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buf, "PNG")
    return buf.getvalue()


async def fetch(url: str) -> tuple[bytes, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return await resp.read(), resp.headers["Content-Type"]


async def test_single_upload_goes_to_the_tokens_base_url(start_storage):
    """One token for many uploads; each file lands at a URL under the token's base_url."""
    sim, storage = await start_storage()
    data = image_bytes()
    url = await storage.upload(data, "image/png", file_name="cat.png")
    assert url.startswith(f"{sim.url}/files/") and url.endswith("cat.png")
    assert await fetch(url) == (data, "image/png")
    other = await storage.upload(image_bytes(color=(1, 2, 3)), "image/png")
    assert other != url
    assert sim.counters.requests_for("token") == 1
    assert sim.counters.requests_for("upload") == 2
    assert storage.token_requests == 1


async def test_upload_of_a_file_path(start_storage, tmp_path: Path):
    sim, storage = await start_storage()
    path = tmp_path / "a.png"
    path.write_bytes(image_bytes())
    url = await storage.upload(path, "image/png", file_name=path.name)
    assert url.startswith(sim.url)
    assert (await fetch(url))[0] == path.read_bytes()


@pytest.mark.parametrize("from_file", [False, True])
async def test_multipart_above_the_threshold(start_storage, tmp_path: Path, from_file: bool):
    """Create, the parts (each answering an ETag), complete: the file is the parts joined."""
    sim, storage = await start_storage(client={"multipart_threshold": 1000, "part_size": 300})
    data = bytes(range(256)) * 9  # 2304 bytes: 8 parts of at most 300
    source: bytes | Path = data
    if from_file:
        source = tmp_path / "big.bin"
        source.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    url = await storage.upload(source, "application/octet-stream", file_name="big.bin", sha256=sha)
    assert (await fetch(url))[0] == data
    assert sim.counters.requests_for("upload") == 1 + 8 + 1  # create, 8 parts, complete
    assert sim.counters.responses_for("upload", 200) == 10


async def test_at_the_threshold_is_a_single_upload(start_storage):
    sim, storage = await start_storage(client={"multipart_threshold": 1000, "part_size": 300})
    await storage.upload(b"x" * 1000, "application/octet-stream")
    assert sim.counters.requests_for("upload") == 1


async def test_token_is_cached_until_it_expires(start_storage):
    """A token is reused while the clock is before expires_at (less a margin), then renewed."""
    now = [1_000_000.0]
    sim, storage = await start_storage(client={"clock": lambda: now[0]})
    first = await storage.token()
    assert await storage.token() is first
    assert first.base_url == sim.url
    assert first.expires_at > now[0]
    now[0] = first.expires_at + 1  # our clock says it has expired; the simulator's does not
    second = await storage.token()
    assert second is not first
    assert sim.counters.requests_for("token") == 2


async def test_expired_token_refused_by_the_cdn_is_refreshed_once(start_storage):
    """The CDN answers 401 for a token past its life: one new token, the upload retried."""
    sim_clock = ManualClock(start=1_000_000.0)
    frozen = sim_clock.now
    sim, storage = await start_storage(
        token_ttl_s=60, clock=sim_clock, client={"clock": lambda: frozen, "token_margin": 0}
    )
    await storage.upload(image_bytes(), "image/png")
    assert sim.counters.responses_for("upload", 401) == 0
    sim_clock.advance(60)  # the simulator's token expires; our frozen clock does not know
    url = await storage.upload(image_bytes(color=(9, 9, 9)), "image/png")
    assert url.startswith(sim.url)
    assert sim.counters.responses_for("upload", 401) == 1
    assert sim.counters.requests_for("token") == 2


async def test_concurrent_uploads_share_one_token_request(start_storage):
    sim, storage = await start_storage()
    blobs = [image_bytes(color=(i, i, i)) for i in range(8)]
    urls = await asyncio.gather(*(storage.upload(b, "image/png") for b in blobs))
    assert len(set(urls)) == 8
    assert sim.counters.requests_for("token") == 1


async def test_a_wrong_key_is_an_auth_error(start_storage):
    sim, storage = await start_storage()
    session = storage._transport._session
    wrong = StorageClient(session, Credentials("not-the-key"), rest_url=sim.url)
    with pytest.raises(AuthError):
        await wrong.upload(image_bytes(), "image/png")
    assert sim.counters.requests_for("upload") == 0


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        (FaultRule(kind="rate_limit", route="upload", retry_after=3), RateLimitedError),
        (FaultRule(kind="http_error", route="upload", status=503), TransientError),
        (FaultRule(kind="drop_before", route="upload"), TransientError),
        (FaultRule(kind="http_error", route="token", status=502), TransientError),
        (FaultRule(kind="drop_before", route="token"), TransientError),
    ],
)
async def test_faults_become_the_queues_error_classes(start_storage, rule, error):
    """One attempt per call, failures translated by the same Transport as the queue's (the CDN
    flow alone: no fallback to the initiate flow)."""
    sim, storage = await start_storage(
        faults=FaultPlan(seed=1, rules=[rule]), client={"flows": ["cdn"]}
    )
    with pytest.raises(error) as caught:
        await storage.upload(image_bytes(), "image/png")
    if isinstance(caught.value, RateLimitedError):
        assert caught.value.retry_after == 3
    assert sim.counters.faults_injected(rule.kind) == 1


async def test_an_unreachable_storage_is_a_connect_error(start_storage):
    _, storage = await start_storage()
    session = storage._transport._session
    nowhere = StorageClient(session, Credentials("k"), rest_url="http://127.0.0.1:9")
    with pytest.raises(ConnectError):
        await nowhere.upload(b"x", "image/png")


@pytest.mark.parametrize("threshold", [10_000, 100])
async def test_changed_content_is_never_uploaded(start_storage, tmp_path: Path, threshold: int):
    """A file whose bytes no longer hash to the expected sha256 is refused (multipart: before
    `complete`, so the file never appears)."""
    sim, storage = await start_storage(client={"multipart_threshold": threshold, "part_size": 64})
    path = tmp_path / "a.png"
    path.write_bytes(image_bytes())
    with pytest.raises(ContentChangedError):
        await storage.upload(path, "image/png", sha256="0" * 64)
    assert len(sim.store) == 0


@pytest.mark.parametrize("status", [0, 503])
async def test_a_cdn_host_that_is_down_hands_the_upload_to_the_initiate_flow(start_storage, status):
    """The CDN host refuses connections (or answers 503): the upload goes through
    `/storage/upload/initiate` and its signed PUT instead, and the file is there."""
    sim, storage = await start_storage(
        faults=FaultPlan(seed=1, rules=[FaultRule(kind="cdn_down", status=status)])
    )
    data = image_bytes(color=(5, 6, 7))
    url = await storage.upload(data, "image/png", file_name="down.png")
    assert await fetch(url) == (data, "image/png")
    assert storage.fallbacks == 1
    assert sim.counters.requests_for("initiate") == 1


async def test_a_failing_token_route_falls_back_to_the_initiate_flow(start_storage):
    """fal_client's order: the CDN flow needs a token; when the token route answers 502 the
    upload goes through the initiate flow on the same REST host."""
    sim, storage = await start_storage(
        faults=FaultPlan(seed=1, rules=[FaultRule(kind="http_error", route="token", status=502)])
    )
    data = image_bytes(color=(8, 9, 10))
    url = await storage.upload(data, "image/png")
    assert (await fetch(url))[0] == data
    assert sim.counters.requests_for("initiate") == 1
    assert sim.counters.requests_for("upload") == 1  # the signed PUT, not a CDN upload
