"""The price a run estimates and budgets with: the job's ``price:``, else fal's (its Platform
API's pricing route, kept with the job by `batch.ledger.prices`)."""

from __future__ import annotations

import logging

from batch.fal import FalError, PlatformClient, QueueClient
from batch.job import JobSpec
from batch.ledger import Ledger
from batch.ledger.prices import MAX_AGE_S, cached_price, keep_price
from batch.manifest import PriceSpec

log = logging.getLogger("batch.run")


def price_from(unit_price: float, unit: str, currency: str) -> PriceSpec | None:
    """A `PriceSpec` for fal's answer, or None for a unit or currency it cannot express."""
    name = unit.strip().lower()
    if currency.strip().upper() != "USD" or unit_price < 0:
        return None
    if "megapixel" in name or name in ("mp", "mps"):
        return PriceSpec(per_megapixel=unit_price)
    if "image" in name:
        return PriceSpec(per_image=unit_price)
    return None


def known_price(spec: JobSpec, ledger: Ledger) -> PriceSpec | None:
    """The price without asking anyone: the job's, else the one kept with the job."""
    return spec.price or cached_price(ledger, spec.endpoint)


async def resolve_price(
    spec: JobSpec, client: QueueClient, ledger: Ledger, platform_url: str | None
) -> PriceSpec | None:
    """The job's price, else a kept one younger than a day, else fal's pricing API's answer
    (kept for the next run). None when fal cannot say; the run goes on without a cost."""
    if platform_url is not None:  # a comparison: each model's own price, for the report
        platform = PlatformClient(client.session, client.credentials, base_url=platform_url)
        for other in spec.endpoints[1:]:
            await _keep_fals(platform, ledger, other)
    price = spec.price or cached_price(ledger, spec.endpoint, max_age=MAX_AGE_S)
    if price is not None:
        return price
    if platform_url is None:
        return cached_price(ledger, spec.endpoint)
    platform = PlatformClient(client.session, client.credentials, base_url=platform_url)
    try:
        answer = await platform.pricing(spec.endpoint)
    except FalError as exc:
        log.warning("fal's pricing API did not give a price for %s: %s", spec.endpoint, exc)
        return cached_price(ledger, spec.endpoint)
    price = price_from(answer.unit_price, answer.unit, answer.currency)
    if price is None:
        log.warning(
            "fal prices %s at %s %s per %s, which this tool cannot apply; set price:",
            spec.endpoint,
            answer.unit_price,
            answer.currency,
            answer.unit,
        )
        return None
    keep_price(ledger, spec.endpoint, price)
    return price


async def _keep_fals(platform: PlatformClient, ledger: Ledger, endpoint: str) -> None:
    """Keep fal's price of `endpoint` (unless one younger than a day is kept); quietly none."""
    if cached_price(ledger, endpoint, max_age=MAX_AGE_S) is not None:
        return
    try:
        answer = await platform.pricing(endpoint)
    except FalError as exc:
        log.info("no price for %s from fal's pricing API: %s", endpoint, exc)
        return
    price = price_from(answer.unit_price, answer.unit, answer.currency)
    if price is not None:
        keep_price(ledger, endpoint, price)
