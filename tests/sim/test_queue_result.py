"""Results (fal-protocol.md §3): the bare model output, replayed failures, and the files."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from batch.schema import EditOutput


async def test_result_is_bare_edit_output_with_fetchable_images(api: Any, make_png: Any) -> None:
    """200 with EditOutput's shape; each image URL serves a real image of the stated size."""
    payload = {
        "prompt": "paint it teal",
        "image_urls": [make_png(20, 10)],
        "image_size": {"width": 24, "height": 16},
        "num_images": 2,
        "output_format": "jpeg",
    }
    sub = await api.submit(payload)
    await api.wait_for(sub)
    reply = await api.result(sub)
    assert reply.status == 200
    assert reply.headers["x-fal-request-id"] == sub["request_id"]
    out = EditOutput.model_validate_json(reply.text)
    assert len(out.images) == 2 and out.has_nsfw_concepts == [False, False]
    assert out.prompt == "paint it teal" and isinstance(out.seed, int)
    assert out.timings["inference"] >= 0
    for image in out.images:
        assert (image.width, image.height, image.content_type) == (24, 16, "image/jpeg")
        async with api.session.get(image.url) as resp:
            assert resp.status == 200
            data = await resp.read()
        assert len(data) == image.file_size
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (24, 16) and im.format == "JPEG"


async def test_response_suffix_serves_the_same_result(api: Any, payload: dict[str, Any]) -> None:
    sub = await api.submit(payload)
    await api.wait_for(sub)
    plain = await api.result(sub)
    suffixed = await api.call("GET", sub["response_url"] + "/response")
    assert plain.status == suffixed.status == 200
    assert plain.json() == suffixed.json()


async def test_result_before_completion_is_400(start_sim: Any, payload: dict[str, Any]) -> None:
    api = await start_sim(latency="fixed:30")
    sub = await api.submit(payload)
    reply = await api.result(sub)
    assert reply.status == 400
    assert reply.json() == {"detail": "Request is still in progress"}


async def test_seed_from_input_is_kept_and_missing_seed_is_reproducible(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """An input seed is echoed; without one, the same sim seed gives the same output seed."""
    seeds = []
    for _ in range(2):
        api = await start_sim(seed=42)
        sub = await api.submit(payload)
        await api.wait_for(sub)
        seeds.append((await api.result(sub)).json()["seed"])
    assert seeds[0] == seeds[1]
    api = await start_sim(seed=42)
    sub = await api.submit({**payload, "seed": 7})
    await api.wait_for(sub)
    assert (await api.result(sub)).json()["seed"] == 7


async def test_nsfw_word_sets_the_flag(api: Any, payload: dict[str, Any]) -> None:
    sub = await api.submit({**payload, "prompt": "something NSFW here", "num_images": 2})
    await api.wait_for(sub)
    assert (await api.result(sub)).json()["has_nsfw_concepts"] == [True, True]


async def test_invalid_input_completes_with_error_and_422_result(api: Any, png_uri: str) -> None:
    """Validation happens in the job: status COMPLETED + error, result 422 with loc."""
    sub = await api.submit({"image_urls": [png_uri], "colour": "red"})
    status = await api.wait_for(sub)
    assert status["error"] and status["error_type"] == "validation_error"
    reply = await api.result(sub)
    assert reply.status == 422
    locs = {tuple(item["loc"]) for item in reply.json()["detail"]}
    assert locs == {("body", "prompt"), ("body", "colour")}
    assert all({"msg", "type"} <= set(item) for item in reply.json()["detail"])


async def test_unfetchable_input_is_422_at_its_index(api: Any, png_uri: str) -> None:
    bad = "data:image/png;base64,bm90IGFuIGltYWdl"
    sub = await api.submit({"prompt": "x", "image_urls": [png_uri, bad]})
    await api.wait_for(sub)
    reply = await api.result(sub)
    assert reply.status == 422
    assert reply.json()["detail"][0]["loc"] == ["body", "image_urls", 1]


async def test_uploaded_file_can_be_an_input(api: Any, make_png: Any) -> None:
    """Token (Key auth) -> upload (Bearer token) -> the access_url works as an input."""
    import base64

    token = await api.call(
        "POST", "/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}
    )
    assert token.status == 200
    auth = f"{token.json()['token_type']} {token.json()['token']}"
    data = base64.b64decode(make_png(30, 20).split(",", 1)[1])
    upload = await api.call(
        "POST",
        "/files/upload",
        data=data,
        headers={"Authorization": auth, "Content-Type": "image/png", "X-Fal-File-Name": "in.png"},
    )
    assert upload.status == 200
    sub = await api.submit({"prompt": "x", "image_urls": [upload.json()["access_url"]]})
    await api.wait_for(sub)
    image = (await api.result(sub)).json()["images"][0]
    assert (image["width"], image["height"]) == (30, 20)
    assert api.sim.counters.requests_for("token") == 1
    assert api.sim.counters.requests_for("upload") == 1


async def test_token_route_needs_the_key(api: Any) -> None:
    async with api.session.post(
        f"{api.url}/storage/auth/token?storage_type=fal-cdn-v3",
        json={},
        headers={"Authorization": "Key nope"},
    ) as resp:
        assert resp.status == 401


async def test_simulator_bug_fails_only_that_job(
    api: Any, payload: dict[str, Any], monkeypatch: Any, caplog: Any
) -> None:
    """An exception inside a job gives a flat 500 internal_error; the slot keeps working."""

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("batch.sim.worker.render", broken)
    sub = await api.submit(payload)
    assert (await api.wait_for(sub))["error_type"] == "internal_error"
    reply = await api.result(sub)
    assert reply.status == 500 and reply.headers["x-fal-error-type"] == "internal_error"
    assert "boom" in caplog.text
    monkeypatch.undo()
    ok = await api.submit(payload)
    await api.wait_for(ok)
    assert (await api.result(ok)).status == 200
