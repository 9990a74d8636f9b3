"""Money (§11 rows 4, 5, 6 and 14): what is billed, `X-Fal-Billable-Units`, the balance and its
403 lock, the Platform API's prices, and the money counters (`paid_twice`)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from batch.sim import LOCKED_DETAIL, FaultPlan, FaultRule

SIZE = {"width": 500, "height": 200}  # 0.1 megapixels per output image


async def test_success_is_billed_in_output_megapixels(api: Any, payload: dict[str, Any]) -> None:
    """FireRed: units = output megapixels at $0.0325 (llms.txt), sent as X-Fal-Billable-Units."""
    sub = await api.submit({**payload, "image_size": SIZE, "num_images": 2})
    await api.wait_for(sub)
    reply = await api.result(sub)
    assert reply.status == 200
    assert reply.headers["x-fal-billable-units"] == "0.2"
    counters = api.sim.counters
    assert counters.billed_requests == 1
    assert counters.billed_units == Decimal("0.2")
    assert counters.billed_usd == Decimal("0.0065")
    record = api.sim.jobs[0]
    assert (record.billed_units, record.billed_usd) == ("0.2", "0.0065")
    snapshot = (await api.call("GET", "/_sim/counters")).json()
    assert snapshot["billed_usd"] == "0.0065" and snapshot["billed_requests"] == 1


async def test_5xx_and_422_are_not_billed_by_default(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(faults=FaultPlan(rules=[FaultRule(kind="job_error", max=1)]))
    failed = await api.submit(payload)
    invalid = await api.submit({**payload, "guidance_scale": 50})
    for sub in (failed, invalid):
        await api.wait_for(sub)
        reply = await api.result(sub)
        assert reply.status in (503, 422) and "x-fal-billable-units" not in reply.headers
    assert api.sim.counters.billed_requests == 0 and api.sim.counters.billed_usd == 0
    assert api.sim.jobs[0].billed_units is None


async def test_a_422_may_be_billed(start_sim: Any, payload: dict[str, Any]) -> None:
    """validation_error_units: a run-time 422 costs that many units; it is no paid success."""
    api = await start_sim(validation_error_units=1)
    invalid = {**payload, "guidance_scale": 50}
    for _ in range(2):
        sub = await api.submit(invalid)
        await api.wait_for(sub)
        reply = await api.result(sub)
        assert reply.status == 422 and reply.headers["x-fal-billable-units"] == "1"
    counters = api.sim.counters
    assert counters.billed_requests == 2 and counters.billed_usd == Decimal("0.065")
    assert counters.paid_twice == 0 and counters.billed_for(api.endpoint, invalid) == 0


async def test_paid_twice_counts_payloads_billed_more_than_once(
    api: Any, payload: dict[str, Any]
) -> None:
    same = dict(reversed(payload.items()))
    subs = [await api.submit(p) for p in (payload, same, {**payload, "seed": 3})]
    for sub in subs:
        await api.wait_for(sub)
    counters = api.sim.counters
    assert counters.billed_requests == 3
    assert counters.billed_for(api.endpoint, payload) == 2  # the same canonical JSON
    assert counters.paid_twice == 1
    assert (await api.call("GET", "/_sim/counters")).json()["paid_twice"] == 1


async def test_other_units_and_unpriced_endpoints(start_sim: Any, payload: dict[str, Any]) -> None:
    api = await start_sim(
        prices={
            "fal-ai/per-image": {"unit_price": 0.25, "unit": "image"},
            "fal-ai/per-call": {"unit_price": 0.1, "unit": "request"},
        }
    )
    done = []
    for endpoint in ("fal-ai/per-image", "fal-ai/per-call", "fal-ai/unpriced"):
        sub = await api.submit({**payload, "num_images": 2}, endpoint=endpoint)
        await api.wait_for(sub)
        done.append((await api.result(sub)).headers["x-fal-billable-units"])
    assert done == ["2", "1", "0.000096"]  # two 8x6 images: 96 pixels
    assert api.sim.counters.billed_usd == Decimal("0.6")
    by_endpoint = api.sim.counters.billed_usd_by_endpoint
    assert by_endpoint["fal-ai/unpriced"] == 0 and by_endpoint["fal-ai/per-image"] == Decimal("0.5")


async def test_billable_units_header_can_be_off(start_sim: Any, payload: dict[str, Any]) -> None:
    api = await start_sim(send_billable_units=False)
    sub = await api.submit(payload)
    await api.wait_for(sub)
    assert "x-fal-billable-units" not in (await api.result(sub)).headers
    assert api.sim.counters.billed_requests == 1


async def test_exhausted_balance_locks_submits_but_not_the_rest(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """Billing depletes balance_usd; then submits get fal's 403 while status, stream, result
    and cancel answer; a top-up unlocks."""
    prices = {"fal-ai/firered-image-edit": {"unit_price": 0.5, "unit": "request"}}
    api = await start_sim(balance_usd=1.0, prices=prices)
    subs = [await api.submit({**payload, "seed": i}) for i in range(2)]
    for sub in subs:
        await api.wait_for(sub)
    assert api.sim.billing.balance == 0 and api.sim.billing.locked
    refused = await api.call("POST", f"/{api.endpoint}", json=payload)
    assert refused.status == 403
    assert refused.json() == {"detail": LOCKED_DETAIL}
    assert LOCKED_DETAIL.startswith("User is locked. Reason: Exhausted balance.")
    assert api.sim.counters.accepted_submits == 2
    sub = subs[0]
    assert (await api.status(sub)).status == 200
    assert (await api.result(sub)).status == 200
    assert (await api.call("GET", sub["status_url"] + "/stream")).status == 200
    assert (await api.call("PUT", sub["cancel_url"])).status == 400
    pricing = await api.call("GET", "/v1/models/pricing", params={"endpoint_id": api.endpoint})
    assert pricing.status == 200
    api.sim.billing.top_up(0.5)
    await api.submit(payload)
    assert api.sim.counters.responses_for("submit", 403) == 1


async def test_requests_already_accepted_still_run_and_are_billed(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    """Two accepted while credit remained: both complete and are billed, below zero."""
    prices = {"fal-ai/firered-image-edit": {"unit_price": 1, "unit": "request"}}
    api = await start_sim(balance_usd=0.5, prices=prices, latency="fixed:0.2")
    subs = [await api.submit({**payload, "seed": i}) for i in range(2)]
    for sub in subs:
        await api.wait_for(sub)
        assert (await api.result(sub)).status == 200
    assert api.sim.billing.balance == Decimal("-1.5")
    assert (await api.call("POST", f"/{api.endpoint}", json=payload)).status == 403


async def test_zero_balance_is_locked_from_the_start(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(balance_usd=0)
    assert (await api.call("POST", f"/{api.endpoint}", json=payload)).status == 403
    assert api.sim.jobs == []


async def test_pricing_route_answers_fals_shape(start_sim: Any) -> None:
    api = await start_sim()
    reply = await api.call(
        "GET", "/v1/models/pricing", params={"endpoint_id": "fal-ai/firered-image-edit"}
    )
    assert reply.status == 200
    assert reply.json() == {
        "prices": [
            {
                "endpoint_id": "fal-ai/firered-image-edit",
                "unit_price": 0.0325,
                "unit": "megapixels",
                "currency": "USD",
            }
        ],
        "next_cursor": None,
        "has_more": False,
    }
    assert api.sim.counters.requests_for("pricing") == 1


async def test_pricing_route_lists_repeated_and_comma_ids_and_needs_a_key(
    start_sim: Any,
) -> None:
    api = await start_sim(
        prices={
            "fal-ai/firered-image-edit": {"unit_price": 0.03},
            "fal-ai/flux/dev": {"unit_price": 0.025, "unit": "image"},
        }
    )
    url = f"{api.url}/v1/models/pricing?endpoint_id=fal-ai/flux/dev,fal-ai/unknown"
    reply = await api.call("GET", url + "&endpoint_id=fal-ai/firered-image-edit")
    prices = {p["endpoint_id"]: (p["unit_price"], p["unit"]) for p in reply.json()["prices"]}
    assert prices == {
        "fal-ai/flux/dev": (0.025, "image"),
        "fal-ai/firered-image-edit": (0.03, "megapixels"),
    }
    missing = await api.call("GET", "/v1/models/pricing")
    assert missing.status == 422 and missing.json()["detail"][0]["loc"] == ["query", "endpoint_id"]
    many = ",".join(f"fal-ai/m{i}" for i in range(51))
    assert (await api.call("GET", "/v1/models/pricing", params={"endpoint_id": many})).status == 422
    async with api.session.get(url, headers={"Authorization": "Key wrong"}) as resp:
        assert resp.status == 401
    body = json.loads((await api.call("GET", "/_sim/counters")).text)
    assert body["responses"]["pricing"] == {"200": 1, "401": 1, "422": 2}
