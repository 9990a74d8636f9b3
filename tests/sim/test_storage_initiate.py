"""Storage beyond the CDN token flow (§7, fal-cdn docs; §11 row 10): the initiate flow with its
signed PUT URL, a CDN host of its own, and a CDN host that is down so a client falls back."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest

from batch.sim import FaultPlan, FaultRule, ManualClock

INITIATE = "/storage/upload/initiate"
CDN = {"storage_type": "fal-cdn-v3"}


def png_bytes(data_uri: str) -> bytes:
    return base64.b64decode(data_uri.split(",", 1)[1])


async def initiate(api: Any, name: str = "in.png", content_type: str = "image/png") -> Any:
    return await api.call(
        "POST", INITIATE, params=CDN, json={"file_name": name, "content_type": content_type}
    )


async def put(url: str, data: bytes, content_type: str = "image/png") -> int:
    """A PUT with no Authorization header, as to a signed URL."""
    headers = {"Content-Type": content_type}
    async with aiohttp.ClientSession() as bare, bare.put(url, data=data, headers=headers) as r:
        return r.status


async def test_initiate_then_put_then_the_file_is_an_input(api: Any, make_png: Any) -> None:
    """Key-authorised initiate -> signed PUT without auth -> file_url serves it and a job can
    use it."""
    reply = await initiate(api)
    assert reply.status == 200
    body = reply.json()
    assert set(body) == {"upload_url", "file_url"}
    assert body["file_url"].startswith(f"{api.url}/files/b/")
    assert body["file_url"].endswith("_in.png") and "signature=" in body["upload_url"]
    assert (await api.call("GET", body["file_url"])).status == 404  # nothing PUT yet
    data = png_bytes(make_png(30, 20))
    assert await put(body["upload_url"], data) == 200
    async with api.session.get(body["file_url"]) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
        assert await resp.read() == data
    sub = await api.submit({"prompt": "x", "image_urls": [body["file_url"]]})
    await api.wait_for(sub)
    image = (await api.result(sub)).json()["images"][0]
    assert (image["width"], image["height"]) == (30, 20)
    counters = api.sim.counters
    assert counters.requests_for("initiate") == 1 and counters.requests_for("upload") == 1


async def test_initiate_needs_the_key_and_a_cdn_storage_type(api: Any) -> None:
    body = {"file_name": "a.png", "content_type": "image/png"}
    async with api.session.post(
        f"{api.url}{INITIATE}", params=CDN, json=body, headers={"Authorization": "Key nope"}
    ) as resp:
        assert resp.status == 401
    gcs = await api.call("POST", INITIATE, params={"storage_type": "gcs"}, json=body)
    assert gcs.status == 400 and gcs.json() == {"detail": "Invalid storage type"}
    missing = await api.call("POST", INITIATE, params=CDN, json={"file_name": "a.png"})
    assert missing.status == 422 and missing.json()["detail"][0]["loc"] == ["body", "content_type"]


async def test_signed_url_checks_signature_type_and_expiry(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock, signed_url_ttl_s=60)
    body = (await initiate(api)).json()
    url = body["upload_url"]
    forged = url.split("signature=")[0] + "signature=forged"
    assert await put(forged, b"x") == 403
    assert await put(url, b"x", content_type="image/jpeg") == 403
    assert (await api.call("GET", body["file_url"])).status == 404
    assert await put(url, b"x") == 200
    clock.advance(60)
    assert await put(url, b"y") == 403
    async with api.session.get(body["file_url"]) as resp:
        assert await resp.read() == b"x"


async def test_cdn_host_of_its_own_is_the_tokens_base_url(start_sim: Any) -> None:
    api = await start_sim(cdn_host=True)
    assert api.sim.cdn_url != api.sim.url
    token = (await api.call("POST", "/storage/auth/token", params=CDN, json={})).json()
    assert token["base_url"] == api.sim.cdn_url
    headers = {"Authorization": f"Bearer {token['token']}", "Content-Type": "image/png"}
    reply = await api.call("POST", f"{api.sim.cdn_url}/files/upload", data=b"abc", headers=headers)
    assert reply.status == 200 and reply.json()["access_url"].startswith(api.sim.cdn_url)
    assert (await api.call("GET", reply.json()["access_url"])).status == 200


async def test_refused_cdn_host_leaves_the_initiate_flow_working(start_sim: Any) -> None:
    """`cdn_down` status 0: connecting to the token's base_url is refused; the queue host's
    initiate flow still stores the file."""
    api = await start_sim(faults=FaultPlan(rules=[FaultRule(kind="cdn_down", status=0)]))
    token = (await api.call("POST", "/storage/auth/token", params=CDN, json={})).json()
    assert token["base_url"] == api.sim.cdn_url != api.sim.url
    headers = {"Authorization": f"Bearer {token['token']}", "Content-Type": "image/png"}
    with pytest.raises(aiohttp.ClientConnectorError) as refused:
        await api.call("POST", f"{token['base_url']}/files/upload", data=b"a", headers=headers)
    assert isinstance(refused.value.os_error, ConnectionRefusedError)
    body = (await initiate(api)).json()
    assert await put(body["upload_url"], b"fallback") == 200
    async with api.session.get(body["file_url"]) as resp:
        assert await resp.read() == b"fallback"


async def test_cdn_host_answering_5xx(start_sim: Any) -> None:
    """`cdn_down` 503: uploads to the CDN host get nginx's 503 (max 1 here); the queue host's
    routes are untouched."""
    rule = FaultRule(kind="cdn_down", status=503, max=1)
    api = await start_sim(faults=FaultPlan(rules=[rule]))
    token = (await api.call("POST", "/storage/auth/token", params=CDN, json={})).json()
    headers = {"Authorization": f"Bearer {token['token']}", "Content-Type": "image/png"}
    upload = f"{api.sim.cdn_url}/files/upload"
    first = await api.call("POST", upload, data=b"a", headers=headers)
    assert first.status == 503 and "nginx" in first.text
    assert "x-fal-request-id" not in first.headers
    assert (await initiate(api)).status == 200
    assert (await api.call("POST", upload, data=b"a", headers=headers)).status == 200
    assert api.sim.counters.faults_injected("cdn_down", "upload") == 1
