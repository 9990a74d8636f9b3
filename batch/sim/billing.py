"""Money: what each completed request costs, the account's balance, and the lock it causes.

fal bills a request by the output it produced, at the endpoint's unit price (pricing docs; the
Platform API's `GET /v1/models/pricing` states it). Here:

- a request that completes with 200 is billed `units` of its endpoint's `Price` (`megapixels`:
  the output images' width x height / 10^6, summed; `image`/`images`: how many; otherwise
  one per request), even when it was cancelled in `signal` mode and ran on;
- a 422 the model returned at run time is billed `SimConfig.validation_error_units` units
  (0 by default: not billed); every other failure (5xx, 499, 504 start timeout) costs nothing;
- the units go out as `X-Fal-Billable-Units` (a decimal string) on the request's result
  (`SimConfig.send_billable_units`).

Amounts are `Decimal`s, so sums are exact. With `SimConfig.balance_usd` set, billing depletes
the balance; at or below zero the account is locked and submits answer 403 (`LOCKED_DETAIL`)
until `top_up()`. Requests already accepted still run and are billed (the balance may go
below zero), as on fal, which charges after the fact.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from batch.sim.config import Price, SimConfig
from batch.sim.counters import Counters, decimal_text
from batch.sim.jobs import Job

LOCKED_DETAIL = (
    "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
)
BILLABLE_UNITS_HEADER = "X-Fal-Billable-Units"
MEGAPIXEL = Decimal(1_000_000)


def output_units(unit: str, body: bytes) -> Decimal:
    """The billable units of one successful output, counted as `unit` says."""
    try:
        output: Any = json.loads(body)
    except ValueError:
        output = None
    images = output.get("images") if isinstance(output, dict) else None
    images = [i for i in images if isinstance(i, dict)] if isinstance(images, list) else []
    if unit in ("image", "images"):
        return Decimal(len(images))
    if unit == "megapixels":
        pixels = 0
        for image in images:
            width, height = image.get("width"), image.get("height")
            if isinstance(width, int) and isinstance(height, int):
                pixels += width * height
        return Decimal(pixels) / MEGAPIXEL
    return Decimal(1)


class Billing:
    """Prices, the balance and the charge made when a job completes."""

    def __init__(self, config: SimConfig, counters: Counters) -> None:
        self.config = config
        self.counters = counters
        self.balance: Decimal | None = (
            None if config.balance_usd is None else Decimal(str(config.balance_usd))
        )

    def __repr__(self) -> str:
        return f"Billing(balance={self.balance}, billed_usd={self.counters.billed_usd})"

    def price(self, endpoint: str) -> Price | None:
        return self.config.prices.get(endpoint)

    @property
    def locked(self) -> bool:
        """True when the account's balance is exhausted: submits are refused."""
        return self.balance is not None and self.balance <= 0

    def top_up(self, usd: float | Decimal | str) -> Decimal:
        """Add credit (an unlimited account becomes limited to it); returns the balance."""
        self.balance = (self.balance or Decimal(0)) + Decimal(str(usd))
        return self.balance

    def charge(self, job: Job) -> None:
        """Bill a job that has just completed, if its outcome is billable."""
        outcome = job.outcome
        if outcome is None:
            return
        endpoint = job.record.endpoint
        price = self.price(endpoint)
        unit = price.unit if price is not None else "megapixels"
        if outcome.status == 200:
            units = output_units(unit, outcome.body)
        elif outcome.status == 422 and self.config.validation_error_units > 0:
            units = Decimal(str(self.config.validation_error_units))
        else:
            return
        usd = units * Decimal(str(price.unit_price)) if price is not None else Decimal(0)
        if self.balance is not None:
            self.balance -= usd
        if self.config.send_billable_units:
            outcome.headers[BILLABLE_UNITS_HEADER] = decimal_text(units)
        job.record.billed_units = decimal_text(units)
        job.record.billed_usd = decimal_text(usd)
        self.counters.record_billing(
            endpoint, job.record.payload_hash, units, usd, success=outcome.status == 200
        )
