"""fal's price for an endpoint, as a run learnt it from the Platform API, kept with the job.

A job file's ``price:`` always wins; without one, a run asks fal's pricing API and keeps the
answer in the ledger, so estimates, the budget, `status` and the report of the job use the
same price offline. An answer older than `MAX_AGE_S` is asked for again by the next run.
"""

from __future__ import annotations

import json
import time

from pydantic import ValidationError

from batch.ledger.store import Ledger
from batch.manifest.pricing import PriceSpec

MAX_AGE_S = 24 * 3600.0


def price_key(endpoint: str) -> str:
    """The `meta` row that keeps fal's price of `endpoint`."""
    return f"price:{endpoint}"


def cached_price(
    ledger: Ledger, endpoint: str, *, max_age: float | None = None
) -> PriceSpec | None:
    """The kept price of `endpoint`, or None (none kept, or older than `max_age` seconds)."""
    return parse_kept(ledger.get_meta(price_key(endpoint)), max_age=max_age)


def parse_kept(text: str | None, *, max_age: float | None = None) -> PriceSpec | None:
    """A kept price from its `meta` value (None for none, a stale one, or an unreadable one)."""
    if text is None:
        return None
    try:
        kept = json.loads(text)
        if max_age is not None and time.time() - float(kept["fetched_at"]) > max_age:
            return None
        return PriceSpec.model_validate(kept["price"])
    except (ValueError, KeyError, TypeError, ValidationError):
        return None


def keep_price(ledger: Ledger, endpoint: str, price: PriceSpec) -> None:
    value = {"price": price.model_dump(exclude_none=True), "fetched_at": time.time()}
    ledger.set_meta(price_key(endpoint), json.dumps(value))
