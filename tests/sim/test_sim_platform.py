"""Platform headers and what they do (§1, common-parameters; §11 rows 7, 8, 9, 11): what a
submit was sent with, payload storage and result retention, media expiration, known apps, and
the only queue 429s."""

from __future__ import annotations

import json
from typing import Any

from batch.sim import ManualClock

DAY = 24 * 3600.0
LIFECYCLE = "X-Fal-Object-Lifecycle-Preference"


def lifecycle(seconds: float | None) -> dict[str, str]:
    return {LIFECYCLE: json.dumps({"expiration_duration_seconds": seconds})}


async def image_url(api: Any, sub: dict[str, Any]) -> str:
    await api.wait_for(sub)
    url: str = (await api.result(sub)).json()["images"][0]["url"]
    return url


async def get_status(api: Any, url: str) -> int:
    async with api.session.get(url) as resp:
        await resp.read()
        return resp.status


# --- what a submit was sent with ----------------------------------------------------------------


async def test_platform_headers_are_recorded_per_request_and_counted(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(capacity=1, latency="fixed:30")
    headers = {
        "X-Fal-Request-Timeout": "30.0",
        "X-Fal-Runner-Hint": "lora-a",
        "X-Fal-Queue-Priority": "low",
        "X-Fal-No-Retry": "1",
        "X-Fal-Store-IO": "0",
        **lifecycle(3600),
    }
    params = {"fal_max_queue_length": "5", "fal_webhook": "https://hooks.test/x"}
    await api.submit(payload, headers=headers, params=params)
    record = api.sim.jobs[0]
    assert record.sent == {
        "x-fal-request-timeout": "30.0",
        "x-fal-runner-hint": "lora-a",
        "x-fal-queue-priority": "low",
        "x-fal-no-retry": "1",
        "x-fal-store-io": "0",
        "x-fal-object-lifecycle-preference": '{"expiration_duration_seconds": 3600}',
        "fal_max_queue_length": "5",
        "fal_webhook": "https://hooks.test/x",
    }
    await api.submit(payload)  # waits
    rejected = await api.call(
        "POST",
        f"/{api.endpoint}",
        json=payload,
        params={"fal_max_queue_length": "0"},
        headers={"X-Fal-Runner-Hint": "lora-b"},
    )
    assert rejected.status == 429
    counters = api.sim.counters
    assert counters.sent("X-Fal-Runner-Hint") == 2  # the refused submit counts too
    assert counters.sent("x-fal-runner-hint", "lora-b") == 1
    assert counters.sent("fal_max_queue_length", "0") == 1
    assert counters.sent("x-fal-request-start-timeout") == 0
    assert (
        "x-fal-runner-hint=lora-a"
        in (await api.call("GET", "/_sim/counters")).json()["submit_params"]
    )
    assert api.sim.jobs[1].sent == {}


async def test_queue_429_comes_only_from_fal_max_queue_length(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """Far more submits than slots: none refused; a queue-length cap refuses with 429."""
    api = await start_sim(capacity=1, latency="fixed:30")
    for i in range(25):
        await api.submit({**payload, "seed": i})
    limited = await api.call(
        "POST", f"/{api.endpoint}", json=payload, params={"fal_max_queue_length": "23"}
    )
    assert limited.status == 429 and "Queue is full" in limited.json()["detail"]
    assert api.sim.counters.responses_for("submit", 429) == 1
    ok = await api.call(
        "POST", f"/{api.endpoint}", json=payload, params={"fal_max_queue_length": "24"}
    )
    assert ok.status == 200


# --- payload storage and result retention -------------------------------------------------------


async def test_result_stays_for_the_payload_storage_period(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """Payload storage on (the default): 30 days. X-Fal-Store-IO: 0: one hour."""
    clock = ManualClock()
    api = await start_sim(clock=clock)
    stored = await api.submit(payload)
    unstored = await api.submit(payload, headers={"X-Fal-Store-IO": "0"})
    await api.wait_for(stored)
    await api.wait_for(unstored)
    clock.advance(3600)
    assert (await api.result(unstored)).status == 404
    assert (await api.result(stored)).status == 200
    clock.advance(30 * DAY - 3601)
    assert (await api.result(stored)).status == 200
    clock.advance(1)
    assert (await api.result(stored)).status == 404


async def test_large_result_without_storage_stays_six_minutes(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock)
    big = {"text": "x" * 11_000}  # an unvalidated endpoint echoes it: a result over 10 KB
    sub = await api.submit(big, endpoint="fal-ai/echo", headers={"X-Fal-Store-IO": "0"})
    await api.wait_for(sub)
    clock.advance(359)
    assert (await api.result(sub)).status == 200
    clock.advance(1)
    assert (await api.result(sub)).status == 404


# --- media expiration -------------------------------------------------------------------------


async def test_outputs_expire_after_seven_days_by_default(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock)
    url = await image_url(api, await api.submit(payload))
    clock.advance(7 * DAY - 1)
    assert await get_status(api, url) == 200
    clock.advance(1)
    assert await get_status(api, url) == 404


async def test_lifecycle_header_sets_the_outputs_life_and_expired_is_gone_for_good(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """fal: expired files are permanently deleted; fetching the result again gives the same,
    dead URL."""
    clock = ManualClock()
    api = await start_sim(clock=clock)
    sub = await api.submit(payload, headers=lifecycle(60))
    url = await image_url(api, sub)
    assert await get_status(api, url) == 200
    clock.advance(60)
    assert await get_status(api, url) == 404
    again = (await api.result(sub)).json()["images"][0]["url"]
    assert again == url and await get_status(api, again) == 404
    forever = await image_url(api, await api.submit(payload, headers=lifecycle(None)))
    clock.advance(365 * DAY)
    assert await get_status(api, forever) == 200


async def test_media_renew_on_result_makes_expired_urls_work_again(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock, media_renew_on_result=True)
    sub = await api.submit(payload, headers=lifecycle(60))
    url = await image_url(api, sub)
    clock.advance(61)
    assert await get_status(api, url) == 404
    renewed = (await api.result(sub)).json()["images"][0]["url"]
    assert await get_status(api, renewed) == 200
    clock.advance(60)
    assert await get_status(api, renewed) == 404


async def test_uploads_follow_their_lifecycle_header(start_sim: Any) -> None:
    clock = ManualClock()
    api = await start_sim(clock=clock)
    token = (
        await api.call(
            "POST", "/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}
        )
    ).json()
    headers = {"Authorization": f"Bearer {token['token']}", "Content-Type": "image/png"}
    short = await api.call("POST", "/files/upload", data=b"x", headers={**headers, **lifecycle(10)})
    default = await api.call("POST", "/files/upload", data=b"y", headers=headers)
    clock.advance(10)
    assert await get_status(api, short.json()["access_url"]) == 404
    assert await get_status(api, default.json()["access_url"]) == 200


# --- known apps and sub-path endpoints ----------------------------------------------------------


async def test_unknown_apps_answer_404_when_apps_are_listed(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(apps=["fal-ai/firered-image-edit", "fal-ai/flux/dev"])
    unknown = await api.call("POST", "/fal-ai/not-an-app", json=payload)
    assert unknown.status == 404 and "not found" in unknown.json()["detail"]
    assert api.sim.jobs == []
    await api.submit(payload)
    sibling = await api.submit(payload, endpoint="fal-ai/flux/schnell")  # the same app
    rid = sibling["request_id"]
    assert sibling["status_url"] == f"{api.url}/fal-ai/flux/requests/{rid}/status"
    await api.wait_for(sibling)
    plain = await api.call("GET", f"{api.url}/fal-ai/flux/requests/{rid}")
    suffixed = await api.call("GET", f"{api.url}/fal-ai/flux/requests/{rid}/response")
    assert plain.status == suffixed.status == 200 and plain.json() == suffixed.json()
    assert (await api.call("GET", f"{api.url}/fal-ai/nope/requests/{rid}/status")).status == 404


async def test_any_app_is_known_by_default(api: Any, payload: dict[str, Any]) -> None:
    await api.submit(payload, endpoint="someone/any-app")
    assert len(api.sim.jobs) == 1
