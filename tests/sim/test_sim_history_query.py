"""The request history's query (`GET /v1/models/requests/by-endpoint`, §11 row 13): status,
request id, time window and endpoint filters, its order, pages and cursors, and the 422s.

Times run on a `ManualClock`; `end` defaults to now and is exclusive, so a test advances the
clock past a request's send time before it lists it."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from support import ECHO
from support import history_items as items
from support import iso_utc as iso
from support import request_ids as ids

from batch.sim import FaultPlan, FaultRule, ManualClock
from batch.sim.clock import DEFAULT_START

HISTORY = "/v1/models/requests/by-endpoint"
DAY = 24 * 3600.0


def cursor(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- filters ----------------------------------------------------------------------------------


async def test_status_filter_sorts_by_status_code(start_sim: Any, payload: dict[str, Any]) -> None:
    clock = ManualClock()
    rules = [FaultRule(kind="job_error", transient=True, max=1)]
    api = await start_sim(clock=clock, faults=FaultPlan(rules=rules))
    failed = await api.submit(payload)  # the job_error fault: a 503 result
    invalid = await api.submit({"prompt": "no images"})  # EditInput refuses it at run time: 422
    ok = await api.submit(payload)
    await api.wait_ended(3)
    clock.advance(1)
    expected = {
        "success": (ok, 200),
        "error": (failed, 503),
        "user_error": (invalid, 422),
    }
    for status, (sub, code) in expected.items():
        params = {"status": status, "expand": "payloads"}
        (item,) = await items(api, params, endpoint=api.endpoint)
        assert item["request_id"] == sub["request_id"] and item["status_code"] == code
        assert (item["json_output"] is not None) is (code == 200)  # a failure has no output
    assert len(await items(api, endpoint=api.endpoint)) == 3


async def test_request_id_filter_and_its_90_day_default_window(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock)
    first = await api.submit({"n": 1}, endpoint=ECHO)
    await api.submit({"n": 2}, endpoint=ECHO)
    await api.wait_ended(2)
    clock.advance(1)
    assert ids(await items(api, {"request_id": first["request_id"]})) == [first["request_id"]]
    assert await items(api, {"request_id": "no-such-request"}) == []
    clock.advance(2 * DAY - 1)
    assert await items(api) == []  # past the 24 h default window
    assert ids(await items(api, {"request_id": first["request_id"]})) == [first["request_id"]]
    clock.advance(88 * DAY)  # now exactly 90 days after it was sent: start is inclusive
    assert len(await items(api, {"request_id": first["request_id"]})) == 1
    clock.advance(1)
    assert await items(api, {"request_id": first["request_id"]}) == []


async def test_start_and_end_filter_on_sent_at(start_sim: Any) -> None:
    """A request sent before `start` is left out even when it ended after it."""
    clock = ManualClock()  # 2023-11-14T22:13:20Z
    api = await start_sim(clock=clock, capacity=1, latency="fixed:30", history_shows="sent")
    running = await api.submit({"n": 0}, endpoint=ECHO)
    early = await api.submit({"n": 1}, endpoint=ECHO)
    clock.advance(3600)
    middle = await api.submit({"n": 2}, endpoint=ECHO)
    clock.advance(3600)  # 2023-11-15T00:13:20Z
    await api.call("PUT", early["cancel_url"])  # ends now, sent two hours ago
    late = await api.submit({"n": 3}, endpoint=ECHO)
    clock.advance(1)
    half_past = iso(DEFAULT_START + 1800)
    assert set(ids(await items(api, {"start": half_past}))) == {
        middle["request_id"],
        late["request_id"],
    }
    before = await items(api, {"end": iso(DEFAULT_START + 3600)})  # exclusive
    assert set(ids(before)) == {running["request_id"], early["request_id"]}
    window = {"start": iso(DEFAULT_START + 3600), "end": iso(DEFAULT_START + 3601)}
    assert ids(await items(api, window)) == [middle["request_id"]]  # start is inclusive
    assert ids(await items(api, {"start": "2023-11-15"})) == [late["request_id"]]
    assert ids(await items(api, {"start": "2023-11-15T02:00:00+02:00"})) == [late["request_id"]]
    assert len(await items(api, {"end": "2023-11-15"})) == 3
    assert len(await items(api)) == 4


async def test_endpoint_id_matches_one_endpoint_ignoring_outer_slashes(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock)
    echo = await api.submit({"n": 1}, endpoint=ECHO)
    other = await api.submit({"n": 1}, endpoint="fal-ai/flux/dev")
    await api.wait_ended(2)
    clock.advance(1)
    assert ids(await items(api, endpoint=f"/{ECHO}/")) == [echo["request_id"]]
    (item,) = await items(api, endpoint="fal-ai/flux/dev")
    assert item["request_id"] == other["request_id"] and item["endpoint_id"] == "fal-ai/flux/dev"


# --- order and pages --------------------------------------------------------------------------


async def test_sorted_by_ended_at_or_duration_descending(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock, capacity=1, latency="fixed:30", cancel_mode="abort")
    long = await api.submit({"n": 1}, endpoint=ECHO)
    short = await api.submit({"n": 2}, endpoint=ECHO)
    clock.advance(100)
    await api.call("PUT", long["cancel_url"])  # aborted after 100 s; `short` starts now
    await api.wait_for(short, "IN_PROGRESS")
    clock.advance(5)
    await api.call("PUT", short["cancel_url"])
    await api.wait_ended(2)
    clock.advance(1)
    by_end = await items(api)
    assert ids(by_end) == [short["request_id"], long["request_id"]]
    assert [i["duration"] for i in by_end] == [5.0, 100.0]
    by_duration = await items(api, {"sort_by": "duration"})
    assert ids(by_duration) == [long["request_id"], short["request_id"]]


async def test_pages_of_a_long_history(start_sim: Any) -> None:
    """250 requests, limit 100: three pages, cursors "Mg==" and "Mw==", newest first."""
    clock = ManualClock()
    api = await start_sim(clock=clock, capacity=50)
    sent = [(await api.submit({"n": i}, endpoint=ECHO))["request_id"] for i in range(250)]
    await api.wait_ended(250)
    clock.advance(1)
    pages = []
    params: dict[str, str] = {"limit": "100"}
    for expected_cursor, expected_more in (("Mg==", True), ("Mw==", True), (None, False)):
        body = (await api.history(params, ECHO)).json()
        assert body["next_cursor"] == expected_cursor and body["has_more"] is expected_more
        pages.append(ids(body["items"]))
        if expected_cursor is not None:
            params = {"limit": "100", "cursor": expected_cursor}
    assert [len(p) for p in pages] == [100, 100, 50]
    assert pages[0] + pages[1] + pages[2] == list(reversed(sent))
    default = (await api.history(endpoint=ECHO)).json()
    assert len(default["items"]) == 50 and default["next_cursor"] == "Mg=="
    one = (await api.history({"limit": "1", "cursor": cursor("250")}, ECHO)).json()
    assert ids(one["items"]) == [sent[0]] and one["has_more"] is False
    beyond = (await api.history({"cursor": cursor("9")}, ECHO)).json()
    assert beyond == {"items": [], "next_cursor": None, "has_more": False}


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "endpoint_id"),
        ({"endpoint_id": " "}, "endpoint_id"),
        ({"endpoint_id": ECHO, "start": "yesterday"}, "start"),
        ({"endpoint_id": ECHO, "end": "2025-13-01"}, "end"),
        ({"endpoint_id": ECHO, "status": "failed"}, "status"),
        ({"endpoint_id": ECHO, "expand": "payloads,logs"}, "expand"),
        ({"endpoint_id": ECHO, "limit": "0"}, "limit"),
        ({"endpoint_id": ECHO, "limit": "101"}, "limit"),
        ({"endpoint_id": ECHO, "limit": "ten"}, "limit"),
        ({"endpoint_id": ECHO, "cursor": "!!"}, "cursor"),
        ({"endpoint_id": ECHO, "cursor": cursor("0")}, "cursor"),
        ({"endpoint_id": ECHO, "cursor": cursor("two")}, "cursor"),
        ({"endpoint_id": ECHO, "sort_by": "sent_at"}, "sort_by"),
    ],
)
async def test_bad_parameters_answer_422(api: Any, params: dict[str, str], field: str) -> None:
    reply = await api.call("GET", HISTORY, params=params)
    assert reply.status == 422, reply.text
    (error,) = reply.json()["detail"]
    assert error["loc"][:2] == ["query", field] and error["msg"] and error["type"]


async def test_limit_bounds_are_accepted(api: Any) -> None:
    for limit in ("1", "100"):
        assert (await api.history({"limit": limit})).status == 200
