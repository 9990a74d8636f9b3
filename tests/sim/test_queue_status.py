"""Status polling (fal-protocol.md §2): codes, bodies, logs, queue positions, 404 and 405."""

from __future__ import annotations

from typing import Any

import pytest


async def test_status_codes_and_body_keys(start_sim: Any, payload: dict[str, Any]) -> None:
    """IN_QUEUE has queue_position; IN_PROGRESS 202 with logs and metrics; COMPLETED 200."""
    api = await start_sim(capacity=1, latency="fixed:30", cancel_mode="abort")
    first = await api.submit(payload)
    second = await api.submit(payload)

    running = await api.status(first)
    assert running.status == 202
    body = running.json()
    assert body["status"] == "IN_PROGRESS"
    assert body["logs"] is None and body["metrics"] == {}
    assert body["response_url"] == first["response_url"]
    assert running.headers["x-fal-request-id"] == first["request_id"]

    waiting = await api.status(second)
    assert waiting.status == 202
    assert waiting.json()["status"] == "IN_QUEUE"
    assert waiting.json()["queue_position"] == 0

    await api.call("PUT", first["cancel_url"])
    done = await api.wait_for(first)
    assert (await api.status(first)).status == 200
    assert done["logs"] is None and "metrics" in done


async def test_completed_status_has_inference_time(api: Any, payload: dict[str, Any]) -> None:
    sub = await api.submit(payload)
    body = await api.wait_for(sub, logs="1")
    assert body["metrics"]["inference_time"] >= 0
    assert "error" not in body and "error_type" not in body


@pytest.mark.parametrize(
    ("value", "wanted"),
    [("1", True), ("true", True), ("0", False), ("false", False), (None, False)],
)
async def test_logs_param_accepts_all_four_spellings(
    api: Any, payload: dict[str, Any], value: str | None, wanted: bool
) -> None:
    """logs=1/true give a list of entries; logs=0/false (or none) give null."""
    sub = await api.submit(payload)
    await api.wait_for(sub)
    body = (await api.status(sub, value)).json()
    if wanted:
        assert isinstance(body["logs"], list) and body["logs"]
        assert {"message", "level", "source", "timestamp"} <= set(body["logs"][0])
    else:
        assert body["logs"] is None


async def test_queue_positions_with_capacity_one(start_sim: Any, payload: dict[str, Any]) -> None:
    """Positions count the requests ahead (0-based) and close up when one ahead leaves."""
    api = await start_sim(capacity=1, latency="fixed:30", cancel_mode="abort")
    subs = [await api.submit(payload) for _ in range(4)]
    assert [s["queue_position"] for s in subs] == [0, 0, 1, 2]
    states = [(await api.status(s)).json() for s in subs]
    assert states[0]["status"] == "IN_PROGRESS"
    assert [s["queue_position"] for s in states[1:]] == [0, 1, 2]

    assert (await api.call("PUT", subs[2]["cancel_url"])).status == 202
    assert (await api.status(subs[3])).json()["queue_position"] == 1
    assert (await api.call("PUT", subs[0]["cancel_url"])).status == 202
    await api.wait_for(subs[1], "IN_PROGRESS")
    assert (await api.status(subs[3])).json()["queue_position"] == 0


@pytest.mark.parametrize("suffix", ["/status", "/status/stream", "", "/response"])
async def test_unknown_request_id_is_404_not_found(api: Any, suffix: str) -> None:
    reply = await api.call("GET", f"/fal-ai/firered-image-edit/requests/no-such-id{suffix}")
    assert reply.status == 404
    assert reply.json() == {"status": "NOT_FOUND"}


async def test_unknown_request_id_cancel_is_404(api: Any) -> None:
    reply = await api.call("PUT", "/fal-ai/firered-image-edit/requests/no-such-id/cancel")
    assert reply.status == 404
    assert reply.json() == {"status": "NOT_FOUND"}


async def test_other_apps_root_does_not_find_the_request(api: Any, payload: dict[str, Any]) -> None:
    sub = await api.submit(payload)
    reply = await api.call("GET", f"/fal-ai/other-app/requests/{sub['request_id']}/status")
    assert reply.status == 404


@pytest.mark.parametrize("suffix", ["/status", "", "/response", "/status/stream"])
async def test_sub_path_in_request_url_is_405(
    api: Any, payload: dict[str, Any], suffix: str
) -> None:
    """A job of fal-ai/flux/dev is served at fal-ai/flux; the full id in the URL gets 405."""
    sub = await api.submit(payload, endpoint="fal-ai/flux/dev")
    reply = await api.call("GET", f"/fal-ai/flux/dev/requests/{sub['request_id']}{suffix}")
    assert reply.status == 405
    assert reply.headers["x-fal-request-id"] == sub["request_id"]
    assert (await api.status(sub)).status in (200, 202)


async def test_sub_path_cancel_and_wrong_method_are_405(api: Any, payload: dict[str, Any]) -> None:
    sub = await api.submit(payload, endpoint="fal-ai/flux/dev")
    rid = sub["request_id"]
    assert (await api.call("PUT", f"/fal-ai/flux/dev/requests/{rid}/cancel")).status == 405
    assert (await api.call("GET", sub["cancel_url"])).status == 405
    assert (await api.call("PUT", sub["status_url"])).status == 405


async def test_status_calls_are_counted_per_request(api: Any, payload: dict[str, Any]) -> None:
    sub = await api.submit(payload)
    for _ in range(3):
        await api.status(sub)
    assert api.sim.counters.status_calls_for(sub["request_id"]) == 3
