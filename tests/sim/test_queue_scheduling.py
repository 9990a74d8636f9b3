"""Scheduling: capacity, priority lanes, start timeouts and fal_max_queue_length (§1, §9)."""

from __future__ import annotations

from typing import Any

from batch.sim import ManualClock

LOW = {"X-Fal-Queue-Priority": "low"}


async def test_capacity_caps_in_progress_and_never_rejects(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(capacity=2, latency="fixed:30")
    subs = [await api.submit(payload) for _ in range(5)]
    states = [(await api.status(s)).json()["status"] for s in subs]
    assert states == ["IN_PROGRESS"] * 2 + ["IN_QUEUE"] * 3


async def test_low_priority_runs_after_normal(start_sim: Any, payload: dict[str, Any]) -> None:
    """A low job submitted first still waits behind normal jobs submitted later."""
    api = await start_sim(capacity=1, latency="fixed:30", cancel_mode="abort")
    blocker = await api.submit(payload)
    low = await api.submit(payload, headers=LOW)
    normal = await api.submit(payload, headers={"X-Fal-Queue-Priority": "normal"})
    assert (await api.status(low)).json()["queue_position"] == 1
    assert (await api.status(normal)).json()["queue_position"] == 0

    await api.call("PUT", blocker["cancel_url"])
    await api.wait_for(normal, "IN_PROGRESS")
    waiting = (await api.status(low)).json()
    assert waiting["status"] == "IN_QUEUE" and waiting["queue_position"] == 0
    await api.call("PUT", normal["cancel_url"])
    await api.wait_for(low, "IN_PROGRESS")


async def test_start_timeout_expires_in_queue(start_sim: Any, payload: dict[str, Any]) -> None:
    """Not picked up within X-Fal-Request-Start-Timeout: 504, timeout type user."""
    api = await start_sim(capacity=1, latency="fixed:30")
    await api.submit(payload)
    sub = await api.submit(payload, headers={"X-Fal-Request-Start-Timeout": "0.2"})
    status = await api.wait_for(sub)
    assert status["error_type"] == "startup_timeout"
    reply = await api.result(sub)
    assert reply.status == 504
    assert reply.headers["x-fal-request-timeout-type"] == "user"
    assert reply.headers["x-fal-error-type"] == "startup_timeout"
    assert reply.json()["error_type"] == "startup_timeout" and reply.json()["detail"]
    assert api.sim.jobs[1].started_at is None


async def test_start_timeout_header_wins_over_deprecated_one(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(capacity=1, latency="fixed:30")
    await api.submit(payload)
    both = await api.submit(
        payload,
        headers={"X-Fal-Request-Start-Timeout": "0.2", "X-Fal-Request-Timeout": "600"},
    )
    old_only = await api.submit(payload, headers={"X-Fal-Request-Timeout": "0.2"})
    assert (await api.wait_for(both))["error_type"] == "startup_timeout"
    assert (await api.wait_for(old_only))["error_type"] == "startup_timeout"


async def test_start_timeout_stops_applying_once_started(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(capacity=1, latency="fixed:0.3")
    sub = await api.submit(payload, headers={"X-Fal-Request-Start-Timeout": "0.15"})
    await api.wait_for(sub)
    assert (await api.result(sub)).status == 200


async def test_max_queue_length_rejects_when_more_are_waiting(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """fal_max_queue_length=N: 429 once more than N wait in that endpoint's queue."""
    api = await start_sim(capacity=1, latency="fixed:30")
    path = f"/{api.endpoint}"
    await api.submit(payload)  # runs
    await api.submit(payload)  # 1 waiting
    limit1 = {"fal_max_queue_length": "1"}
    assert (await api.call("POST", path, json=payload, params=limit1)).status == 200
    rejected = await api.call("POST", path, json=payload, params=limit1)
    assert rejected.status == 429 and rejected.json()["detail"]
    assert (
        await api.call("POST", path, json=payload, params={"fal_max_queue_length": "0"})
    ).status == 429
    assert len(api.sim.jobs) == 3
    # Another endpoint's queue is empty, so the same limit lets it in.
    other = await api.call(
        "POST", "/fal-ai/other", json=payload, params={"fal_max_queue_length": "0"}
    )
    assert other.status == 200


async def test_max_queue_length_must_be_an_integer(api: Any, payload: dict[str, Any]) -> None:
    reply = await api.call(
        "POST", f"/{api.endpoint}", json=payload, params={"fal_max_queue_length": "many"}
    )
    assert reply.status == 422
    assert reply.json()["detail"][0]["loc"] == ["query", "fal_max_queue_length"]


async def test_max_submits_per_second_answers_429_with_retry_after(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    clock = ManualClock()
    api = await start_sim(max_submits_per_second=0.25, clock=clock)
    await api.submit(payload)
    reply = await api.call("POST", f"/{api.endpoint}", json=payload)
    assert reply.status == 429
    assert int(reply.headers["retry-after"]) == 4  # one submit per 4 s
    assert reply.json()["error_type"] == "concurrent_requests_limit"
    assert api.sim.counters.accepted_submits == 1
    clock.advance(3)
    reply = await api.call("POST", f"/{api.endpoint}", json=payload)
    assert reply.status == 429 and int(reply.headers["retry-after"]) == 1
    clock.advance(1)  # the bucket has refilled one submit
    await api.submit(payload)
    assert api.sim.counters.accepted_submits == 2
