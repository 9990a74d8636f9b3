"""Our QueueClient against the simulator over real sockets: every call, every quirk."""

import asyncio

import pytest
from support import ENDPOINT, TEST_KEY, edit

from batch.fal import (
    AuthError,
    Completed,
    InProgress,
    NotFoundError,
    PermanentError,
    QueueClient,
    Queued,
    RequestHandle,
)
from batch.fal.auth import Credentials
from batch.schema import EditOutput


async def _until_completed(client, handle) -> Completed:
    async with asyncio.timeout(10):
        while True:
            status = await client.status(handle)
            if isinstance(status, Completed):
                return status
            await asyncio.sleep(0.01)


async def test_submit_status_result_round_trip(start_sim):
    """Submit returns a handle with the server's URLs; status ends 200 COMPLETED; result is bare."""
    sim, client = await start_sim(latency="fixed:0.05")
    handle = await client.submit(ENDPOINT, edit(seed=7, output_format="jpeg"))
    assert handle.request_id and handle.endpoint == ENDPOINT
    assert handle.status_url == f"{sim.url}/{ENDPOINT}/requests/{handle.request_id}/status"
    assert handle.cancel_url.endswith(f"/requests/{handle.request_id}/cancel")
    first = await client.status(handle)
    assert isinstance(first, Queued | InProgress | Completed)
    done = await _until_completed(client, handle)
    assert not done.failed
    assert done.metrics["inference_time"] >= 0
    result = await client.result(handle)
    out = EditOutput.model_validate(result.output)
    assert out.seed == 7 and out.prompt == "make it blue"
    assert out.images[0].content_type == "image/jpeg"
    assert out.images[0].url.startswith(f"{sim.url}/files/")


async def test_status_202_while_waiting_and_200_when_done(start_sim):
    """The client accepts both codes fal uses (fal-protocol §2) and reads queue positions."""
    sim, client = await start_sim(capacity=1, latency="fixed:0.3")
    handles = [await client.submit(ENDPOINT, edit(f"p{i}")) for i in range(3)]
    last = await client.status(handles[2])
    assert last == Queued(position=1) or last == Queued(position=2)
    assert sim.counters.responses_for("status", 202) == 1
    await _until_completed(client, handles[2])
    assert sim.counters.responses_for("status", 200) >= 1


async def test_logs_requested_and_not(start_sim):
    """With logs the list is returned; without, the key is present but null (parsed as empty)."""
    _sim, client = await start_sim(latency="fixed:0.05")
    handle = await client.submit(ENDPOINT, edit())
    await _until_completed(client, handle)
    with_logs = await client.status(handle, logs=True)
    assert isinstance(with_logs, Completed) and with_logs.logs
    without = await client.status(handle, logs=False)
    assert isinstance(without, Completed) and without.logs == ()


async def test_response_suffix_url_and_rebuilt_handle(start_sim):
    """Both `/requests/{id}` and `/requests/{id}/response` serve the result (new docs' URL)."""
    _sim, client = await start_sim()
    handle = await client.submit(ENDPOINT, edit())
    await _until_completed(client, handle)
    suffixed = RequestHandle(
        handle.endpoint,
        handle.request_id,
        handle.status_url,
        handle.response_url + "/response",
        handle.cancel_url,
    )
    assert await client.result(suffixed) == await client.result(handle)
    rebuilt = client.handle_for(ENDPOINT, handle.request_id)
    assert rebuilt == handle
    assert isinstance(await client.status(rebuilt), Completed)


async def test_sub_path_endpoint_addresses_the_app_root(start_sim):
    """`fal-ai/flux/dev` submits to the full id; status/result live under `fal-ai/flux`."""
    sim, client = await start_sim()
    handle = await client.submit("fal-ai/flux/dev", edit())
    assert f"/fal-ai/flux/requests/{handle.request_id}" in handle.status_url
    assert "/dev/" not in handle.status_url
    await _until_completed(client, handle)
    rebuilt = client.handle_for("fal-ai/flux/dev", handle.request_id)
    assert rebuilt.response_url == handle.response_url
    assert (await client.result(rebuilt)).output["images"]
    workflow = await client.submit("workflows/acme/wf/run", edit())
    assert f"{sim.url}/workflows/acme/wf/requests/" in workflow.status_url


async def test_unknown_request_is_not_found(start_sim):
    """404 NOT_FOUND for an unknown id on status, result and cancel."""
    _sim, client = await start_sim()
    ghost = client.handle_for(ENDPOINT, "00000000-0000-0000-0000-000000000000")
    for call in (client.status, client.result, client.cancel):
        with pytest.raises(NotFoundError) as caught:
            await call(ghost)
        assert caught.value.status == 404


async def test_invalid_input_fails_at_result_with_detail(start_sim):
    """fal queues a bad input, completes it with an error, and replays 422 at the result."""
    _sim, client = await start_sim()
    handle = await client.submit(ENDPOINT, {"prompt": "x", "image_urls": ["data:,x"], "colour": 1})
    done = await _until_completed(client, handle)
    assert done.failed
    with pytest.raises(PermanentError) as caught:
        await client.result(handle)
    assert caught.value.status == 422
    assert isinstance(caught.value.detail, list)
    assert any(entry["loc"][-1] == "colour" for entry in caught.value.detail)


async def test_cancel_three_outcomes(start_sim):
    """202 accepted (True), 400 ALREADY_COMPLETED (False), 404 unknown (NotFoundError)."""
    _sim, client = await start_sim(capacity=1, latency="fixed:0.5")
    running = await client.submit(ENDPOINT, edit("first"))
    waiting = await client.submit(ENDPOINT, edit("second"))
    assert await client.cancel(waiting) is True
    cancelled = await _until_completed(client, waiting)
    assert cancelled.error_type == "client_cancelled"
    await _until_completed(client, running)
    assert await client.cancel(running) is False
    with pytest.raises(NotFoundError):
        await client.cancel(client.handle_for(ENDPOINT, "nope"))


async def test_stream_status_ends_with_completed_and_skips_pings(start_sim):
    """SSE: statuses arrive as events, `: ping` comments are ignored, the stream ends."""
    sim, client = await start_sim(capacity=1, latency="fixed:0.4", ping_interval_s=0.05)
    blocker = await client.submit(ENDPOINT, edit("blocker"))
    handle = await client.submit(ENDPOINT, edit("streamed"))
    seen = [status async for status in client.stream_status(handle)]
    assert isinstance(seen[-1], Completed) and not seen[-1].failed
    assert any(isinstance(s, Queued) for s in seen)
    assert sim.counters.requests_for("stream") == 1
    assert (await client.result(handle)).output
    await _until_completed(client, blocker)


async def test_wrong_key_is_auth_error_without_the_key(start_sim):
    """401 becomes AuthError; neither the message nor the repr carries the key."""
    _sim, client = await start_sim(key="wrong-key-123456")
    with pytest.raises(AuthError) as caught:
        await client.submit(ENDPOINT, edit())
    assert caught.value.status == 401
    text = f"{caught.value} {caught.value!r} {caught.value.detail}"
    assert "wrong-key-123456" not in text and TEST_KEY not in text


def test_missing_key_is_refused_before_any_request(monkeypatch):
    monkeypatch.delenv("FAL_KEY", raising=False)
    monkeypatch.delenv("FAL_KEY_ID", raising=False)
    with pytest.raises(AuthError, match="FAL_KEY"):
        QueueClient(base_url="http://127.0.0.1:9")


async def test_key_from_env_is_sent(start_sim, monkeypatch):
    """FAL_KEY_ID + FAL_KEY_SECRET make `id:secret`, which the server accepts."""
    sim, _ = await start_sim()
    key_id, secret = TEST_KEY.split("-", 1)
    monkeypatch.delenv("FAL_KEY", raising=False)
    monkeypatch.setenv("FAL_KEY_ID", key_id)
    monkeypatch.setenv("FAL_KEY_SECRET", secret)
    async with QueueClient(base_url=sim.url) as client:
        with pytest.raises(AuthError):
            await client.submit(ENDPOINT, edit())  # "test:key-…" is not the accepted key
    async with QueueClient(base_url=sim.url, credentials=Credentials(TEST_KEY)) as client:
        assert (await client.submit(ENDPOINT, edit())).request_id
