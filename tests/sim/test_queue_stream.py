"""The status stream (fal-protocol.md §2a): one event per change, pings, closed at COMPLETED."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def _read_events(api: Any, url: str) -> tuple[list[dict[str, Any]], int, str]:
    async with api.session.get(url, params={"logs": "1"}) as resp:
        assert resp.headers["x-fal-request-id"] in url
        text = await resp.text()  # returns only when the server closes the stream
        content_type = resp.headers["Content-Type"]
    events = [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: ")]
    pings = sum(1 for line in text.split("\n") if line == ": ping")
    assert text.endswith("\n\n")
    return events, pings, content_type


async def test_stream_reports_each_state_and_closes(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """A queued job streams IN_QUEUE, IN_PROGRESS, COMPLETED (ends the stream), with pings."""
    api = await start_sim(capacity=1, latency="fixed:30", ping_interval_s=0.02)
    blocker = await api.submit(payload)
    queued = await api.submit(payload)
    reader = asyncio.create_task(_read_events(api, queued["status_url"] + "/stream"))
    # Let the stream report IN_QUEUE and ping a few times, then free the slot.
    while api.sim.counters.requests_for("stream") == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    await api.call("PUT", blocker["cancel_url"])
    await api.wait_for(queued, "IN_PROGRESS")
    await api.call("PUT", queued["cancel_url"])
    events, pings, content_type = await asyncio.wait_for(reader, 10)

    assert content_type.startswith("text/event-stream")
    states = [e["status"] for e in events]
    assert states[0] == "IN_QUEUE" and events[0]["queue_position"] == 0
    assert "IN_PROGRESS" in states
    assert states[-1] == "COMPLETED" and states.count("COMPLETED") == 1
    assert events[-1]["error_type"] == "client_cancelled"
    assert isinstance(events[-1]["logs"], list)
    assert pings >= 1


async def test_stream_of_completed_job_sends_one_event(api: Any, payload: dict[str, Any]) -> None:
    sub = await api.submit(payload)
    await api.wait_for(sub)
    events, _, _ = await _read_events(api, sub["status_url"] + "/stream")
    assert [e["status"] for e in events] == ["COMPLETED"]
    assert events[0]["metrics"]["inference_time"] >= 0


async def test_stream_follows_queue_position(start_sim: Any, payload: dict[str, Any]) -> None:
    """A waiting job's stream sends a new event when a job ahead of it leaves."""
    api = await start_sim(capacity=1, latency="fixed:30")
    blocker = await api.submit(payload)
    ahead = await api.submit(payload)
    mine = await api.submit(payload)
    reader = asyncio.create_task(_read_events(api, mine["status_url"] + "/stream"))
    while api.sim.counters.requests_for("stream") == 0:
        await asyncio.sleep(0.01)
    await api.call("PUT", ahead["cancel_url"])
    await api.call("PUT", blocker["cancel_url"])
    await api.wait_for(mine, "IN_PROGRESS")
    await api.call("PUT", mine["cancel_url"])
    events, _, _ = await asyncio.wait_for(reader, 10)
    positions = [e["queue_position"] for e in events if e["status"] == "IN_QUEUE"]
    assert positions[0] == 1 and positions[-1] == 0


async def test_open_stream_ends_when_the_simulator_stops(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(capacity=1, latency="fixed:30")
    sub = await api.submit(payload)
    reader = asyncio.create_task(_read_events(api, sub["status_url"] + "/stream"))
    while api.sim.counters.requests_for("stream") == 0:
        await asyncio.sleep(0.01)
    await api.sim.stop()
    events, _, _ = await asyncio.wait_for(reader, 10)
    assert [e["status"] for e in events] == ["IN_PROGRESS"]
