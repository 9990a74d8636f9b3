"""The report's comparison of endpoints: what its Compare view (``report.html#view=compare``) is
drawn from.

A job run on several endpoints (``endpoints: [a, b, c]``, or ``run --endpoint a --endpoint b``)
has each manifest item once per endpoint, keyed ``<input key>@<alias>`` (`endpoint_alias`), its
``endpoint`` column the full endpoint id; a redo (`batch.ledger.redo`) adds ``~redo<n>``. When
the ledger holds more than one endpoint, `Compared` adds to each item's record what the view
needs — ``en`` the endpoint's index in the page's endpoint list, ``b`` the input's key (one row
per input), ``c`` the item's cost in USD when its endpoint's price is known — and counts each
endpoint's totals for the view's header: items done, failed and unfinished, median and p95
latency (submit to done), output images, fal's billable units, the cost and the cost per image;
and the same across endpoints.

Cost is counted as the job's spend counts it (`batch.ledger.spend`): a completed item costs its
billable units × the unit price where fal sent them and they are in the price's unit, else its
outputs at the price. Each endpoint has its own price: the one a run kept for it from fal's
pricing API (`batch.ledger.prices`), or for the job's own endpoint the job file's ``price:``.
An endpoint without a known price shows its billable units instead.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batch.fal.endpoints import endpoint_alias, input_key
from batch.ledger.prices import parse_kept, price_key
from batch.ledger.spend import unit_price, units_apply
from batch.manifest.pricing import PriceSpec, usd
from batch.report.page import quantile


def fine_usd(value: float) -> str:
    """``$0.00639``, ``$0.0197``: three significant digits under a dollar (what an item or an
    image costs, to compare endpoints by), else `usd`."""
    if value == 0 or abs(value) >= 1:
        return usd(value)
    whole, _, cents = format(Decimal(f"{value:.3g}"), "f").partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def price_text(price: PriceSpec) -> str:
    """``$0.0325/MP``, ``$0.04/image``: the unit price as given (`PriceSpec.describe` rounds
    it to the cent)."""
    if price.per_image is not None:
        return f"${price.per_image:g}/image"
    return f"${price.per_megapixel:g}/MP"


def ledger_endpoints(conn: sqlite3.Connection, first: Sequence[str] = ()) -> list[str]:
    """The endpoints the ledger's items are for: those of `first` (the job's order) that it
    holds, then the others by name."""
    found = [str(e) for (e,) in conn.execute("SELECT DISTINCT endpoint FROM items ORDER BY 1")]
    ordered = [e for e in dict.fromkeys(first) if e in found]
    return ordered + [e for e in found if e not in ordered]


@dataclass(frozen=True, slots=True)
class Priced:
    """An endpoint's price, and whether fal's billable units can be priced at it."""

    price: PriceSpec
    use_units: bool

    def cost(self, units: float | None, pixels: Sequence[int]) -> float:
        if units is not None and self.use_units:
            return units * unit_price(self.price)
        return self.price.cost(len(pixels), sum(pixels))


def endpoint_prices(
    conn: sqlite3.Connection,
    endpoints: Sequence[str],
    job_price: PriceSpec | None = None,
    job_endpoint: str | None = None,
) -> dict[str, Priced]:
    """Each endpoint's known price: the job file's for the job's endpoint, else the one kept
    in the ledger for it; endpoints with neither are left out."""
    prices: dict[str, Priced] = {}
    for endpoint in endpoints:
        row = conn.execute("SELECT value FROM meta WHERE name = ?", (price_key(endpoint),))
        found = row.fetchone()
        kept = parse_kept(found[0] if found else None)
        if job_price is not None and endpoint == job_endpoint:
            prices[endpoint] = Priced(job_price, units_apply(job_price, kept))
        elif kept is not None:
            prices[endpoint] = Priced(kept, True)
    return prices


@dataclass
class Totals:
    """One endpoint's items (or all of them), for the Compare view's header."""

    items: int = 0
    completed: int = 0
    failed: int = 0
    unfinished: int = 0  # pending or submitted
    images: int = 0  # output images of completed items
    units: float = 0.0  # fal's billable units of completed items
    billed: int = 0  # completed items with billable units
    cost: float = 0.0  # completed items at their endpoint's price
    priced_images: int = 0  # output images of the completed items with a cost
    latencies: list[float] = field(default_factory=list)

    def add(self, state: str, latency: float | None, images: int, units: float | None) -> None:
        self.items += 1
        if state == "completed":
            self.completed += 1
            self.images += images
            if units is not None:
                self.units += units
                self.billed += 1
        elif state == "failed":
            self.failed += 1
        else:
            self.unfinished += 1
        if latency is not None:
            self.latencies.append(latency)

    def as_dict(self, priced: bool) -> dict[str, Any]:
        """The page's header record: ``n`` items, ``done``, ``failed``, ``open``, ``med`` and
        ``p95`` (s), ``img`` output images, ``u`` billable units; with a price, ``cost`` and
        ``per`` (USD, per output image) and their texts ``cost_t`` and ``per_t``."""
        ordered = sorted(self.latencies)
        out: dict[str, Any] = {
            "n": self.items,
            "done": self.completed,
            "failed": self.failed,
            "open": self.unfinished,
            "med": None if not ordered else round(quantile(ordered, 0.5), 3),
            "p95": None if not ordered else round(quantile(ordered, 0.95), 3),
            "img": self.images,
            "u": round(self.units, 6) if self.billed else None,
        }
        if priced:
            out["cost"] = round(self.cost, 6)
            out["cost_t"] = usd(self.cost)
            per = self.cost / self.priced_images if self.priced_images else None
            out["per"] = None if per is None else round(per, 6)
            out["per_t"] = None if per is None else fine_usd(per) + "/image"
        return out


class Compared:
    """The comparison being read: the endpoints (in the page's order), their prices, totals."""

    def __init__(self, endpoints: Sequence[str], prices: dict[str, Priced]) -> None:
        self.endpoints = list(endpoints)
        self.prices = prices
        self.index = {e: n for n, e in enumerate(self.endpoints)}
        self.totals = {e: Totals() for e in self.endpoints}
        self.all = Totals()

    @classmethod
    def read(
        cls,
        conn: sqlite3.Connection,
        order: Sequence[str] = (),
        price: PriceSpec | None = None,
        endpoint: str | None = None,
    ) -> Compared | None:
        """The comparison of the ledger's endpoints (`order` first), or None for fewer than
        two. `price`: the job file's, for its `endpoint`."""
        endpoints = ledger_endpoints(conn, order)
        if len(endpoints) < 2:
            return None
        return cls(endpoints, endpoint_prices(conn, endpoints, price, endpoint))

    def add(
        self,
        record: dict[str, Any],
        endpoint: str,
        state: str,
        units: float | None,
        pixels: Sequence[int],
    ) -> None:
        """Count an item and give its record ``en``, ``b`` and (priced) ``c``. `pixels`: its
        output images' sizes (width × height each)."""
        if endpoint not in self.index:  # a ledger written meanwhile: a column more
            self.index[endpoint] = len(self.endpoints)
            self.endpoints.append(endpoint)
            self.totals[endpoint] = Totals()
        record["en"] = self.index[endpoint]
        record["b"] = input_key(record["k"], endpoint)
        latency = record.get("l")
        for totals in (self.totals[endpoint], self.all):
            totals.add(state, latency, len(pixels), units)
        priced = self.prices.get(endpoint)
        if priced is not None and state == "completed":
            cost = priced.cost(units, pixels)
            record["c"] = round(cost, 6)
            for totals in (self.totals[endpoint], self.all):
                totals.cost += cost
                totals.priced_images += len(pixels)

    @property
    def unpriced(self) -> list[str]:
        return [e for e in self.endpoints if e not in self.prices]

    def as_dict(self) -> dict[str, Any]:
        """What the page embeds as ``compare-data``: ``endpoints`` (``id``, ``alias``,
        ``price`` text or null, ``t`` totals) and ``all`` (totals across them)."""
        endpoints = [
            {
                "id": e,
                "alias": endpoint_alias(e),
                "price": price_text(self.prices[e].price) if e in self.prices else None,
                "t": self.totals[e].as_dict(e in self.prices),
            }
            for e in self.endpoints
        ]
        every = self.all.as_dict(bool(self.prices))
        every["unpriced"] = [endpoint_alias(e) for e in self.unpriced]
        return {"endpoints": endpoints, "all": every}

    def json(self) -> str:
        """`as_dict` as JSON safe inside a <script> element."""
        text = json.dumps(self.as_dict(), ensure_ascii=False, separators=(",", ":"))
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")

    def cost_line(self) -> str | None:
        """The page's cost line for a comparison (each endpoint at its own price), or None
        when no endpoint's price is known."""
        if not self.prices:
            return None
        text = f"{usd(self.all.cost)} spent on completed items, each endpoint at its own price"
        if self.unpriced:
            names = ", ".join(endpoint_alias(e) for e in self.unpriced)
            text += f" (no price known for {names}: not counted)"
        return text
