"""PlatformClient: fal's Platform API (``https://api.fal.ai/v1``), beside the queue.

Two routes. ``GET /v1/models/pricing?endpoint_id=...`` (fal docs: platform-apis/v1/models/
pricing), the unit price of endpoints for estimating and capping spend:

    200 {"prices": [{"endpoint_id": "fal-ai/flux/dev", "unit_price": 0.025, "unit": "image",
                     "currency": "USD"}],
         "next_cursor": null, "has_more": false}

``endpoint_id`` takes 1 to 50 ids (repeated, or comma-separated). Auth is the same
``Authorization: Key ...`` as the queue's. Errors are ``{"error": {"type", "message",
"docs_url", "request_id"}}`` with 400, 401, 404 or 429; they become the same `FalError` tree
through the same `Transport` as every other call. One attempt per call, like `QueueClient`.

And ``GET /v1/models/requests/by-endpoint`` (`batch.fal.history`), the account's requests of
an endpoint, where a submit whose answer was lost can be found.

Built on a shared session (`QueueClient.session`), so TLS settings (``ca_bundle``) are the
queue client's. Each route is one ``self._get(call, path, params)`` and a parser of its answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from batch.fal.auth import Credentials
from batch.fal.client import USER_AGENT
from batch.fal.errors import NotFoundError, TransientError
from batch.fal.history import MAX_HISTORY_LIMIT, HistoryPage, iso_time, parse_history
from batch.fal.transport import Params, Reply, Transport

DEFAULT_PLATFORM_URL = "https://api.fal.ai"
MAX_PRICING_IDS = 50  # what one pricing request takes


@dataclass(frozen=True)
class EndpointPrice:
    """An endpoint's price: ``unit_price`` in ``currency`` per billing ``unit`` (e.g. "image");
    a result's `billable_units` times ``unit_price`` is its cost."""

    endpoint_id: str
    unit_price: float
    unit: str
    currency: str


@dataclass(frozen=True)
class PlatformTimeouts:
    """Per-call limits in seconds."""

    connect: float = 10.0
    request: float = 30.0

    def total(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.request, sock_connect=self.connect)


class PlatformClient:
    """fal's Platform API over a shared aiohttp session (e.g. `QueueClient.session`)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        base_url: str = DEFAULT_PLATFORM_URL,
        *,
        timeouts: PlatformTimeouts | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or PlatformTimeouts()
        self._transport = Transport(session, credentials.header, USER_AGENT)

    async def _get(self, call: str, path: str, params: Params | None = None) -> Reply:
        """One GET of ``{base_url}/v1{path}``; a non-2xx answer raises its `FalError`."""
        return await self._transport.send(
            call, "GET", f"{self.base_url}/v1{path}", timeout=self.timeouts.total(), params=params
        )

    async def pricing(self, endpoint_id: str) -> EndpointPrice:
        """The price of one endpoint. NotFoundError when fal lists no price for it."""
        prices = await self.prices([endpoint_id])
        return prices[_key(endpoint_id)]

    async def prices(self, endpoint_ids: Sequence[str]) -> dict[str, EndpointPrice]:
        """The prices of 1 to 50 endpoints, by endpoint id (as asked, without outer slashes).
        NotFoundError when fal lists no price for one of them."""
        wanted = list(dict.fromkeys(_key(e) for e in endpoint_ids))
        if not wanted or len(wanted) > MAX_PRICING_IDS or not all(wanted):
            raise ValueError(f"pricing takes 1 to {MAX_PRICING_IDS} endpoint ids, not {wanted!r}")
        reply = await self._get("pricing", "/models/pricing", [("endpoint_id", e) for e in wanted])
        found = _parse_prices(reply)
        missing = [e for e in wanted if e not in found]
        if missing:
            raise NotFoundError(f"pricing: fal lists no price for {', '.join(missing)}")
        return {e: found[e] for e in wanted}

    async def requests(
        self,
        endpoint_id: str,
        *,
        start: float,
        end: float | None = None,
        cursor: str | None = None,
        limit: int = MAX_HISTORY_LIMIT,
        request_id: str | None = None,
    ) -> HistoryPage:
        """One page of the endpoint's request history from `start` (epoch seconds; to `end`,
        or now), with payloads: pass the page's `next_cursor` to read the next one."""
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise ValueError(f"limit must be 1 to {MAX_HISTORY_LIMIT}, not {limit}")
        params = [
            ("endpoint_id", _key(endpoint_id)),
            ("start", iso_time(start)),
            ("expand", "payloads"),
            ("limit", str(limit)),
        ]
        if end is not None:
            params.append(("end", iso_time(end)))
        if request_id is not None:
            params.append(("request_id", request_id))
        if cursor is not None:
            params.append(("cursor", cursor))
        return parse_history(await self._get("history", "/models/requests/by-endpoint", params))


def _key(endpoint_id: str) -> str:
    return endpoint_id.strip().strip("/")


def _parse_prices(reply: Reply) -> dict[str, EndpointPrice]:
    body = reply.body if isinstance(reply.body, dict) else {}
    items = body.get("prices")
    if not isinstance(items, list):
        raise TransientError("pricing: answer has no prices list", status=reply.status)
    found: dict[str, EndpointPrice] = {}
    for item in items:
        price = _price(item)
        if price is None:
            raise TransientError(f"pricing: unusable price entry {item!r}"[:300])
        found[_key(price.endpoint_id)] = price
    return found


def _price(item: Any) -> EndpointPrice | None:
    if not isinstance(item, dict):
        return None
    endpoint_id, unit_price = item.get("endpoint_id"), item.get("unit_price")
    unit, currency = item.get("unit"), item.get("currency")
    if (
        not isinstance(endpoint_id, str)
        or isinstance(unit_price, bool)
        or not isinstance(unit_price, int | float)
        or not math.isfinite(unit_price)
        or unit_price < 0
        or not isinstance(unit, str)
        or not isinstance(currency, str)
    ):
        return None
    return EndpointPrice(endpoint_id, float(unit_price), unit, currency)
