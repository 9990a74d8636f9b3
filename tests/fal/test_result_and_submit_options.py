"""`result()` returns a `Result` with fal's X-Fal-Billable-Units; `submit()` sends platform
headers as given and `fal_max_queue_length` as a query parameter (fal docs: common-parameters)."""

import dataclasses
import json

import pytest

from batch.fal import Credentials, PermanentError, QueueClient, RateLimitedError, Result
from batch.fal.transport import Reply, error_for_reply, parse_billable_units

KEY = "result-test-key-0123456789"
ENDPOINT = "fal-ai/firered-image-edit"
OUTPUT = {"images": [{"url": "https://v3.fal.media/files/x.png"}], "seed": 7}


def _submitted(url: str) -> dict[str, str]:
    base = f"{url}/{ENDPOINT}/requests/r1"
    return {
        "request_id": "r1",
        "response_url": base,
        "status_url": f"{base}/status",
        "cancel_url": f"{base}/cancel",
    }


@pytest.mark.parametrize(
    ("header", "units"),
    [({"X-Fal-Billable-Units": "1.5"}, 1.5), ({"X-Fal-Billable-Units": "2"}, 2.0), ({}, None)],
)
async def test_result_carries_billable_units(serve, kit, header, units):
    server = await serve({("GET", f"/{ENDPOINT}/requests/r1"): kit.Answer(200, OUTPUT, header)})
    async with QueueClient(base_url=server.url, credentials=Credentials(KEY)) as client:
        result = await client.result(client.handle_for(ENDPOINT, "r1"))
    assert isinstance(result, Result)
    assert result == Result(output=OUTPUT, billable_units=units)
    assert result.output["seed"] == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.billable_units = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("0.25", 0.25),
        (" 4 ", 4.0),
        ("0", 0.0),
        ("", None),
        ("abc", None),
        ("nan", None),
        ("inf", None),
        ("-1", None),
        (None, None),
    ],
)
def test_billable_units_parsing(value, parsed):
    assert parse_billable_units(value) == parsed


def test_an_error_answer_keeps_its_billable_units():
    """A 422 may be billed: its X-Fal-Billable-Units rides on the error."""
    exc = error_for_reply(
        "result", Reply(422, {"x-fal-billable-units": "1"}, {"detail": [{"msg": "x"}]})
    )
    assert isinstance(exc, PermanentError) and exc.billable_units == 1.0


async def test_submit_sends_platform_headers_and_queue_length(serve, kit):
    routes = {}
    server = await serve(routes)
    routes[("POST", f"/{ENDPOINT}")] = kit.Answer(200, _submitted(server.url))
    lifecycle = json.dumps({"expiration_duration_seconds": 3600})
    platform = {
        "X-Fal-Request-Timeout": "45",
        "X-Fal-Runner-Hint": "lora-a",
        "X-Fal-No-Retry": "1",
        "X-Fal-Store-IO": "0",
        "X-Fal-Object-Lifecycle-Preference": lifecycle,
    }
    async with QueueClient(base_url=server.url, credentials=Credentials(KEY)) as client:
        handle = await client.submit(
            ENDPOINT,
            {"prompt": "p"},
            webhook_url="https://hooks.example/fal?x=1",
            priority="low",
            headers=platform,
            max_queue_length=3,
        )
    assert handle.request_id == "r1"
    (sent,) = server.calls("POST", f"/{ENDPOINT}")
    for name, value in platform.items():
        assert sent.headers[name.lower()] == value
    assert sent.headers["x-fal-queue-priority"] == "low"
    assert sent.headers["authorization"] == f"Key {KEY}"
    assert sent.param("fal_max_queue_length") == "3"
    assert sent.param("fal_webhook") == "https://hooks.example/fal?x=1"
    assert sent.json() == {"prompt": "p"}


async def test_a_given_header_replaces_the_one_a_keyword_makes(serve, kit):
    """start_timeout makes X-Fal-Request-Timeout; a header of that name (any case) replaces
    it: one value on the wire, never two."""
    routes = {}
    server = await serve(routes)
    routes[("POST", f"/{ENDPOINT}")] = kit.Answer(200, _submitted(server.url))
    async with QueueClient(base_url=server.url, credentials=Credentials(KEY)) as client:
        await client.submit(
            ENDPOINT, {"prompt": "p"}, start_timeout=30, headers={"x-fal-request-timeout": "10"}
        )
        await client.submit(ENDPOINT, {"prompt": "p"}, start_timeout=30)
    first, second = server.calls("POST", f"/{ENDPOINT}")
    assert first.headers["x-fal-request-timeout"] == "10"
    assert first.headers["x-fal-request-start-timeout"] == "30.0"
    assert second.headers["x-fal-request-timeout"] == "30.0"
    assert "fal_max_queue_length" not in dict(second.query)


async def test_queue_length_exceeded_is_rate_limited(serve, kit):
    server = await serve({("POST", f"/{ENDPOINT}"): kit.Answer(429, {"detail": "Queue is full"})})
    async with QueueClient(base_url=server.url, credentials=Credentials(KEY)) as client:
        with pytest.raises(RateLimitedError):
            await client.submit(ENDPOINT, {"prompt": "p"}, max_queue_length=0)
    assert server.seen[0].param("fal_max_queue_length") == "0"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"headers": {"Authorization": "Key other"}}, ValueError),
        ({"headers": {"content-type": "text/plain"}}, ValueError),
        ({"headers": {"X-Fal-Store-IO": 0}}, TypeError),
        ({"max_queue_length": -1}, ValueError),
        ({"max_queue_length": True}, ValueError),
    ],
)
async def test_bad_submit_options_are_refused_before_sending(serve, kit, kwargs, error):
    server = await serve({})
    async with QueueClient(base_url=server.url, credentials=Credentials(KEY)) as client:
        with pytest.raises(error):
            await client.submit(ENDPOINT, {"prompt": "p"}, **kwargs)
    assert server.seen == []
