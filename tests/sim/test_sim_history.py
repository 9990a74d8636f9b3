"""The Platform API's request history, `GET /v1/models/requests/by-endpoint` (§11 row 13):
fal's shape, which requests it lists and when, auth and faults, over real sockets
(`test_sim_history_query.py`: its filters, order, pages and 422s).

Times run on a `ManualClock`; `end` defaults to now and is exclusive, so a test advances the
clock past a request's send time before it lists it."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from support import ECHO
from support import history_items as items
from support import iso_utc as iso
from support import request_ids as ids

from batch.sim import FaultPlan, FaultRule, ManualClock
from batch.sim.clock import DEFAULT_START

HISTORY = "/v1/models/requests/by-endpoint"
DAY = 24 * 3600.0
DISCONNECTED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
BASE_KEYS = {
    "request_id",
    "endpoint_id",
    "sent_at",
    "started_at",
    "ended_at",
    "status_code",
    "duration",
}


T0 = iso(DEFAULT_START)


# --- fal's shape ------------------------------------------------------------------------------


async def test_completed_request_is_listed_with_its_payloads_in_fals_shape(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock)
    sub = await api.submit(payload)
    await api.wait_for(sub)
    result = (await api.result(sub)).json()
    clock.advance(1)
    reply = await api.history({"expand": "payloads"}, endpoint=api.endpoint)
    assert reply.status == 200
    body = reply.json()
    assert body["next_cursor"] is None and body["has_more"] is False
    assert body["items"] == [
        {
            "request_id": sub["request_id"],
            "endpoint_id": api.endpoint,
            "sent_at": T0,
            "started_at": T0,
            "ended_at": T0,
            "status_code": 200,
            "duration": 0.0,
            "json_input": payload,
            "json_output": result,
        }
    ]
    assert api.sim.counters.requests_for("history") == 1
    assert api.sim.counters.responses_for("history", 200) == 1


async def test_payloads_only_when_expanded_and_billing_adds_units(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock)
    await api.wait_for(await api.submit(payload))
    clock.advance(1)
    (plain,) = await items(api, endpoint=api.endpoint)
    assert set(plain) == BASE_KEYS
    (billed,) = await items(api, {"expand": "billing"}, endpoint=api.endpoint)
    units = api.sim.jobs[0].billed_units
    assert units is not None and float(units) > 0
    assert set(billed) == BASE_KEYS | {"billable_units"} and billed["billable_units"] == float(
        units
    )
    everything = BASE_KEYS | {"json_input", "json_output", "billable_units"}
    comma = [("endpoint_id", api.endpoint), ("expand", "billing,payloads")]
    repeated = [("endpoint_id", api.endpoint), ("expand", "payloads"), ("expand", "billing")]
    for params in (comma, repeated):
        (item,) = await items(api, params)
        assert set(item) == everything and item["json_input"] == payload


# --- which requests, and when -----------------------------------------------------------------


async def test_by_default_a_request_shows_only_once_it_has_ended(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock, capacity=1, latency="fixed:30")
    await api.submit({"n": 1}, endpoint=ECHO)  # runs for 30 s
    queued = await api.submit({"n": 2}, endpoint=ECHO)
    clock.advance(1)
    assert await items(api) == []
    assert (await api.call("PUT", queued["cancel_url"])).status == 202
    clock.advance(1)
    (item,) = await items(api)
    assert item["request_id"] == queued["request_id"]
    assert item["status_code"] == 499 and item["ended_at"] == iso(DEFAULT_START + 1)
    assert item["started_at"] is None and item["duration"] == 0.0  # it never ran
    assert ids(await items(api, {"status": "user_error"})) == [queued["request_id"]]  # 4xx
    assert await items(api, {"status": "error"}) == []


async def test_history_shows_sent_lists_requests_from_their_submit(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock, capacity=1, latency="fixed:30", history_shows="sent")
    running = await api.submit({"n": 1}, endpoint=ECHO)
    queued = await api.submit({"n": 2}, endpoint=ECHO)
    clock.advance(1)
    listed = await items(api, {"expand": "payloads"})
    assert ids(listed) == [queued["request_id"], running["request_id"]]  # newest first
    first, second = listed
    assert second["started_at"] == T0 and first["started_at"] is None
    for item in listed:
        assert item["ended_at"] is None and item["status_code"] is None
        assert item["duration"] is None and item["json_output"] is None
    assert second["json_input"] == {"n": 1}
    for status in ("success", "error", "user_error"):
        assert await items(api, {"status": status}) == []  # not ended: no status yet
    await api.call("PUT", queued["cancel_url"])
    listed = await items(api)
    assert ids(listed) == [running["request_id"], queued["request_id"]]  # not ended first
    assert listed[1]["status_code"] == 499


async def test_history_lag_delays_an_ended_request(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock, history_lag_s=10)
    sub = await api.submit({"n": 1}, endpoint=ECHO)
    await api.wait_for(sub)
    clock.advance(9.5)
    assert await items(api) == []
    clock.advance(0.5)
    assert ids(await items(api)) == [sub["request_id"]]


async def test_history_lag_shows_the_state_of_lag_seconds_ago(start_sim: Any) -> None:
    """With `sent`, a request appears lag seconds after its submit, its start and its end lag
    seconds after they happened."""
    clock = ManualClock()
    api = await start_sim(
        clock=clock,
        capacity=1,
        latency="fixed:30",
        cancel_mode="abort",
        history_shows="sent",
        history_lag_s=10,
    )
    running = await api.submit({"n": 1}, endpoint=ECHO)
    queued = await api.submit({"n": 2}, endpoint=ECHO)
    clock.advance(5)
    assert await items(api) == []
    clock.advance(5)
    assert len(await items(api)) == 2
    await api.call("PUT", running["cancel_url"])  # aborted now; `queued` starts now
    await api.wait_for(queued, "IN_PROGRESS")
    late = {i["request_id"]: i for i in await items(api)}
    assert late[running["request_id"]]["status_code"] is None
    assert late[queued["request_id"]]["started_at"] is None
    clock.advance(10)
    now = {i["request_id"]: i for i in await items(api)}
    assert now[running["request_id"]]["status_code"] == 499
    assert now[running["request_id"]]["ended_at"] == iso(DEFAULT_START + 10)
    assert now[queued["request_id"]]["started_at"] == iso(DEFAULT_START + 10)


async def test_history_lag_hides_an_end_and_its_output_until_it_shows(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock, latency="fixed:0.3", history_shows="sent", history_lag_s=10)
    sub = await api.submit({"n": 1}, endpoint=ECHO)
    clock.advance(5)  # the job runs 0.3 s of real time: it ends at the sim's t0 + 5
    await api.wait_for(sub)
    assert api.sim.jobs[0].completed_at == DEFAULT_START + 5  # the premise of this test
    clock.advance(5)
    params = {"expand": "payloads,billing"}
    (running,) = await items(api, params)
    assert running["ended_at"] is None and running["status_code"] is None
    assert running["json_output"] is None and running["billable_units"] is None
    assert running["json_input"] == {"n": 1}
    clock.advance(5)
    (ended,) = await items(api, params)
    assert ended["status_code"] == 200 and ended["ended_at"] == iso(DEFAULT_START + 5)
    assert ended["json_output"] == {"images": [], "input": {"n": 1}}
    assert ended["billable_units"] == 0.0  # no price and no images: billed, zero units


async def test_store_io_off_lists_the_request_without_payloads(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock)
    stored = await api.submit({"n": 1}, endpoint=ECHO)
    unstored = await api.submit({"n": 2}, endpoint=ECHO, headers={"X-Fal-Store-IO": "0"})
    await api.wait_ended(2)
    clock.advance(1)
    by_id = {i["request_id"]: i for i in await items(api, {"expand": "payloads"})}
    assert by_id[stored["request_id"]]["json_input"] == {"n": 1}
    assert by_id[stored["request_id"]]["json_output"] == {"images": [], "input": {"n": 1}}
    dark = by_id[unstored["request_id"]]
    assert dark["status_code"] == 200
    assert dark["json_input"] is None and dark["json_output"] is None


async def test_only_requests_the_queue_accepted_are_listed(start_sim: Any) -> None:
    clock = ManualClock()
    rules = [FaultRule(kind="fal_error", route="submit", status=503, max=1)]
    api = await start_sim(clock=clock, faults=FaultPlan(rules=rules))
    url = f"/{ECHO}"
    assert (await api.call("POST", url, json={"n": 0})).status == 503  # fal's own error
    assert (await api.call("POST", url, data=b"[1]")).status == 422
    full = await api.call("POST", url, json={"n": 0}, params={"fal_max_queue_length": "-1"})
    assert full.status == 429
    accepted = await api.submit({"n": 1}, endpoint=ECHO)
    await api.wait_for(accepted)
    clock.advance(1)
    assert ids(await items(api)) == [accepted["request_id"]]


async def test_a_submit_whose_answer_was_dropped_is_listed_with_its_input(
    start_sim: Any,
) -> None:
    """The ambiguous case the route exists for: the client finds its payload there."""
    clock = ManualClock()
    api = await start_sim(
        clock=clock, faults=FaultPlan(rules=[FaultRule(kind="drop_after", route="submit", max=1)])
    )
    mine = {"prompt": "a lost answer", "seed": 7}
    with pytest.raises(DISCONNECTED):
        await api.call("POST", f"/{ECHO}", json=mine)
    await api.wait_ended(1)
    clock.advance(1)
    (item,) = await items(api, {"expand": "payloads"})
    assert item["json_input"] == mine and item["status_code"] == 200
    assert item["request_id"] == api.sim.jobs[0].request_id
    assert item["json_output"] == {"images": [], "input": mine}


async def test_history_outlives_result_retention(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock)
    sub = await api.submit({"n": 1}, endpoint=ECHO)
    await api.wait_for(sub)
    clock.advance(30 * DAY)
    assert (await api.result(sub)).status == 404
    params = {"request_id": sub["request_id"], "expand": "payloads"}
    (item,) = await items(api, params)
    assert item["json_output"] == {"images": [], "input": {"n": 1}}


async def test_history_keeps_the_newest_requests_up_to_its_bound(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock, history_max_requests=3)
    subs = [await api.submit({"n": i}, endpoint=ECHO) for i in range(5)]
    await api.wait_ended(5)
    clock.advance(1)
    assert ids(await items(api)) == [s["request_id"] for s in reversed(subs[2:])]
    assert len(api.sim.history) == 3


# --- auth and faults --------------------------------------------------------------------------


async def test_a_key_is_required(api: Any) -> None:
    url = f"{api.url}{HISTORY}?endpoint_id={ECHO}"
    async with aiohttp.ClientSession() as bare, bare.get(url) as missing:
        assert missing.status == 401
    wrong = await api.call("GET", url, headers={"Authorization": "Key wrong"})
    assert wrong.status == 401
    assert (await api.call("GET", url)).status == 200
    assert api.sim.counters.responses_for("history", 401) == 2
    assert api.sim.counters.requests_for("history") == 3


async def test_faults_apply_to_the_history_route(start_sim: Any) -> None:
    rules = [
        FaultRule(kind="http_error", route="history", status=500, max=1),
        FaultRule(kind="rate_limit", route="history", retry_after=3, max=1),
        FaultRule(kind="drop_before", route="history", max=2),  # aiohttp retries a GET once
    ]
    api = await start_sim(faults=FaultPlan(rules=rules))
    await api.submit({"n": 1}, endpoint=ECHO)  # other routes are untouched
    assert (await api.history()).status == 500
    limited = await api.history()
    assert limited.status == 429 and limited.headers["retry-after"] == "3"
    with pytest.raises(DISCONNECTED):
        await api.history()
    assert (await api.history()).status == 200
    counters = api.sim.counters
    assert counters.faults_injected(route="history") == 4
    assert counters.responses_for("history", 0) == 2
    assert counters.faults_injected("http_error", "history") == 1
    assert counters.faults_injected(route="submit") == 0
    assert counters.responses_for("history", 200) == 1
