"""PlatformClient.pricing against a server answering as fal's Platform API docs show
(GET /v1/models/pricing?endpoint_id=..., auth `Key`, errors as {"error": {type, message}})."""

import pytest

from batch.fal import (
    DEFAULT_PLATFORM_URL,
    AuthError,
    Credentials,
    EndpointPrice,
    NotFoundError,
    PermanentError,
    PlatformClient,
    QueueClient,
    RateLimitedError,
    TransientError,
)

KEY = "platform-test-key-0123456789"
ENDPOINT = "fal-ai/firered-image-edit"


def _prices(*entries: dict) -> dict:
    return {"prices": list(entries), "next_cursor": None, "has_more": False}


def _entry(endpoint_id: str = ENDPOINT, unit_price=0.03, unit="image", currency="USD") -> dict:
    return {
        "endpoint_id": endpoint_id,
        "unit_price": unit_price,
        "unit": unit,
        "currency": currency,
    }


def _error(kind: str, message: str) -> dict:
    return {"error": {"type": kind, "message": message, "docs_url": "https://fal.ai/docs"}}


async def _pricing(serve, answer, *endpoints: str):
    server = await serve({("GET", "/v1/models/pricing"): answer})
    async with QueueClient(base_url=server.url, credentials=Credentials(KEY)) as client:
        platform = PlatformClient(client.session, client.credentials, base_url=server.url)
        if len(endpoints) == 1:
            return server, await platform.pricing(endpoints[0])
        return server, await platform.prices(endpoints)


async def test_pricing_of_one_endpoint(serve, kit):
    server, price = await _pricing(serve, kit.Answer(200, _prices(_entry())), ENDPOINT)
    assert price == EndpointPrice(ENDPOINT, 0.03, "image", "USD")
    (seen,) = server.seen
    assert seen.path == "/v1/models/pricing"
    assert seen.query == [("endpoint_id", ENDPOINT)]
    assert seen.headers["authorization"] == f"Key {KEY}"
    assert DEFAULT_PLATFORM_URL == "https://api.fal.ai"


async def test_prices_of_several_endpoints_in_one_request(serve, kit):
    answer = kit.Answer(
        200,
        _prices(_entry("fal-ai/flux/dev", 0.025), _entry(ENDPOINT, 1, "megapixels")),
    )
    server, prices = await _pricing(serve, answer, ENDPOINT, "/fal-ai/flux/dev/")
    assert prices == {
        ENDPOINT: EndpointPrice(ENDPOINT, 1.0, "megapixels", "USD"),
        "fal-ai/flux/dev": EndpointPrice("fal-ai/flux/dev", 0.025, "image", "USD"),
    }
    assert isinstance(prices[ENDPOINT].unit_price, float)
    assert server.seen[0].query == [("endpoint_id", ENDPOINT), ("endpoint_id", "fal-ai/flux/dev")]


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (401, "authorization_error", AuthError),
        (404, "not_found", NotFoundError),
        (429, "rate_limited", RateLimitedError),
        (400, "validation_error", PermanentError),
        (500, "server_error", TransientError),
    ],
)
async def test_platform_errors_use_the_same_tree(serve, kit, status, kind, expected):
    with pytest.raises(expected) as caught:
        await _pricing(serve, kit.Answer(status, _error(kind, f"it went {kind}")), ENDPOINT)
    assert caught.value.status == status
    assert caught.value.error_type == kind
    assert caught.value.detail == f"it went {kind}"
    assert f"it went {kind}" in str(caught.value)
    assert KEY not in str(caught.value)


async def test_an_endpoint_without_a_price_is_not_found(serve, kit):
    with pytest.raises(NotFoundError, match=ENDPOINT):
        await _pricing(serve, kit.Answer(200, _prices(_entry("fal-ai/other"))), ENDPOINT)


@pytest.mark.parametrize(
    "body",
    [
        {"detail": "odd"},
        _prices(_entry(unit_price="cheap")),
        _prices(_entry(unit_price=-1)),
        _prices(_entry(currency=None)),
        _prices(_entry(unit_price=True)),
    ],
)
async def test_an_unusable_answer_is_transient(serve, kit, body):
    with pytest.raises(TransientError):
        await _pricing(serve, kit.Answer(200, body), ENDPOINT)


async def test_endpoint_id_count_is_checked_before_sending(serve, kit):
    server = await serve({})
    async with QueueClient(base_url=server.url, credentials=Credentials(KEY)) as client:
        platform = PlatformClient(client.session, client.credentials, base_url=server.url)
        with pytest.raises(ValueError):
            await platform.prices([])
        with pytest.raises(ValueError):
            await platform.prices([f"o/a{i}" for i in range(51)])
    assert server.seen == []
