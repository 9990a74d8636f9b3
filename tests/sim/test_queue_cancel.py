"""Cancel (fal-protocol.md §4): the three answers, and what a cancelled request reports.

A running request is only signalled by default (`cancel_mode: signal`, fal's behaviour; see
test_sim_cancel_retry.py); these tests stop it with `cancel_mode: abort`."""

from __future__ import annotations

from typing import Any


async def _assert_cancelled(api: Any, sub: dict[str, Any]) -> None:
    status = await api.wait_for(sub)
    assert status["error_type"] == "client_cancelled" and status["error"]
    reply = await api.result(sub)
    assert reply.status == 499
    assert reply.json()["error_type"] == "client_cancelled"
    assert reply.headers["x-fal-error-type"] == "client_cancelled"


async def test_cancel_in_queue_removes_it(start_sim: Any, payload: dict[str, Any]) -> None:
    api = await start_sim(capacity=1, latency="fixed:30")
    await api.submit(payload)
    queued = await api.submit(payload)
    reply = await api.call("PUT", queued["cancel_url"])
    assert reply.status == 202
    assert reply.json() == {"status": "CANCELLATION_REQUESTED"}
    assert reply.headers["x-fal-request-id"] == queued["request_id"]
    await _assert_cancelled(api, queued)
    assert api.sim.jobs[1].started_at is None


async def test_cancel_in_progress_stops_it(start_sim: Any, payload: dict[str, Any]) -> None:
    api = await start_sim(capacity=1, latency="fixed:30", cancel_mode="abort")
    running = await api.submit(payload)
    queued = await api.submit(payload)
    await api.wait_for(running, "IN_PROGRESS")
    assert (await api.call("PUT", running["cancel_url"])).status == 202
    await _assert_cancelled(api, running)
    # The freed slot goes to the next job.
    await api.wait_for(queued, "IN_PROGRESS")


async def test_cancel_completed_is_400_already_completed(api: Any, payload: dict[str, Any]) -> None:
    sub = await api.submit(payload)
    await api.wait_for(sub)
    reply = await api.call("PUT", sub["cancel_url"])
    assert reply.status == 400
    assert reply.json() == {"status": "ALREADY_COMPLETED"}
    assert (await api.result(sub)).status == 200


async def test_cancel_twice_is_harmless(start_sim: Any, payload: dict[str, Any]) -> None:
    api = await start_sim(capacity=1, latency="fixed:30", cancel_mode="abort")
    sub = await api.submit(payload)
    assert (await api.call("PUT", sub["cancel_url"])).status == 202
    await api.wait_for(sub)
    assert (await api.call("PUT", sub["cancel_url"])).status == 400
