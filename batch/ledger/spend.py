"""What a job has spent and holds, read from the ledger with the job's unit price; what a run
would send. The budget (`batch.pipeline.budget`), `status` and the run summary read it.

- completed items cost what fal billed: their billable units (``X-Fal-Billable-Units``, in
  fal's unit for the endpoint: a megapixel or an image) × the unit price, where the ledger has
  them; else what their outputs are: width × height × count, from the ledger;
- items whose request succeeded but whose download failed (kind ``download``) are paid for:
  their estimate;
- items in flight — `submitted`, or a submit on its way (``submit_started_at``) — are held at
  their estimate until they finish (fal bills successful requests).

An output size that is not known before the run (a remote input without ``image_size``) is
estimated at the largest output image the job has produced so far, at least
`UNKNOWN_IMAGE_PIXELS`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batch.ledger.prices import parse_kept, price_key
from batch.ledger.store import REATTACH_KINDS, Ledger
from batch.manifest.pricing import Estimate, PriceSpec, output_basis
from batch.outputs import OutputRecord

UNKNOWN_IMAGE_PIXELS = 1_000_000
EPSILON = 1e-9  # so that 5 × $0.01 fits in a $0.05 budget


@dataclass
class JobSpend:
    """Spend so far and holds by item key, in USD at `price`."""

    price: PriceSpec
    sizes: dict[str, tuple[int, int]]  # local input sizes by sha256
    spent: float = 0.0
    holds: dict[str, float] = field(default_factory=dict)
    largest: int = 0  # pixels of the largest output image seen
    billed: int = 0  # completed items whose cost is fal's billable units, not an estimate
    estimated: int = 0  # items in `spent` at an estimate (no billable units)
    # fal's units are in the endpoint's own pricing unit: they price an item only when `price`
    # is in that unit, which a price learnt from fal's pricing API says (`units_apply`).
    use_units: bool = False

    @property
    def held(self) -> float:
        return sum(self.holds.values())

    @property
    def unit_price(self) -> float:
        """USD per unit of fal's billing: per megapixel or per image, whichever is set."""
        return unit_price(self.price)

    def basis(self) -> str:
        """How `spent` was counted, for a person: ``estimate at $0.03/MP``, ``billed units at
        $0.03/MP``, or ``billed units for 3 items, estimate for 2, at $0.03/MP``."""
        at = self.price.describe()
        if not self.billed:
            return f"estimate at {at}"
        if not self.estimated:
            return f"billed units at {at}"
        return f"billed units for {_items(self.billed)}, estimate for {self.estimated}, at {at}"

    def estimate(self, payload: Mapping[str, Any]) -> float:
        """What a request is expected to cost (see the module docstring for unknown sizes)."""
        images, pixels = output_basis(payload, self.sizes.get)
        if pixels is None:
            pixels = images * max(self.largest, UNKNOWN_IMAGE_PIXELS)
        return self.price.cost(images, pixels)

    def add_completed(
        self, outputs: Iterable[OutputRecord], *, billable_units: float | None = None
    ) -> None:
        """Count a completed item: its billable units × the unit price when fal sent them
        (`ItemRow.billable_units`), else what its outputs estimate."""
        pixels = [(o.width or 0) * (o.height or 0) for o in outputs]
        self.largest = max([self.largest, *pixels])
        if billable_units is not None and self.use_units:
            self.spent += billable_units * self.unit_price
            self.billed += 1
        else:
            self.spent += self.price.cost(len(pixels), sum(pixels))
            self.estimated += 1


def unit_price(price: PriceSpec) -> float:
    """USD per unit of fal's billing: `per_megapixel` or `per_image`, whichever is set."""
    value = price.per_megapixel if price.per_megapixel is not None else price.per_image
    assert value is not None  # PriceSpec has exactly one
    return value


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _known_sizes(ledger: Ledger) -> dict[str, tuple[int, int]]:
    return {f.sha256: (f.width, f.height) for f in ledger.uploads.known_files().values()}


def units_apply(price: PriceSpec, fals: PriceSpec | None) -> bool:
    """Whether fal's billable units can be priced at `price`: fal's own price for the endpoint
    (`fals`, from its pricing API) is known and is in the same unit."""
    return fals is not None and (fals.per_image is None) == (price.per_image is None)


def job_spend(ledger: Ledger, price: PriceSpec, endpoint: str | None = None) -> JobSpend:
    """Spend and holds as the ledger has them now (one read transaction). `endpoint`: the
    job's, whose price learnt from fal says whether billable units apply."""
    sizes = _known_sizes(ledger)
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("BEGIN")
        spend = spend_in(conn, price, sizes, endpoint)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return spend


def spend_in(
    conn: sqlite3.Connection,
    price: PriceSpec,
    sizes: dict[str, tuple[int, int]],
    endpoint: str | None = None,
) -> JobSpend:
    """`job_spend` read through `conn`, in the caller's read transaction (the report reads
    it in the snapshot it draws the page from). `sizes`: local input sizes by sha256."""
    kept = None
    if endpoint is not None:
        row = conn.execute("SELECT value FROM meta WHERE name = ?", (price_key(endpoint),))
        found = row.fetchone()
        kept = parse_kept(found[0] if found else None)
    spend = JobSpend(price, sizes, use_units=units_apply(price, kept))
    spend_completed(conn, spend)
    marks = ", ".join("?" * len(REATTACH_KINDS))
    rows = conn.execute(
        "SELECT key, request, state FROM items WHERE state = 'submitted'"
        " OR (state = 'pending' AND submit_started_at IS NOT NULL)"
        f" OR (state = 'failed' AND error_kind IN ({marks}))",
        REATTACH_KINDS,
    )
    for key, request, state in rows:
        cost = spend.estimate(json.loads(request))
        if state == "failed":
            spend.spent += cost
            spend.estimated += 1
        else:
            spend.holds[key] = cost
    return spend


def spend_completed(conn: sqlite3.Connection, spend: JobSpend) -> None:
    """Add the completed items to `spend`, read through `conn` (in the caller's snapshot):
    those with billable units at units × the unit price, the others at their outputs' cost;
    `largest` from every completed output."""
    units_col = "billable_units" if spend.use_units else "NULL"  # a column or a constant
    billed, units, estimated = conn.execute(
        f"SELECT coalesce(sum({units_col} IS NOT NULL), 0), coalesce(sum({units_col}), 0),"
        f" coalesce(sum({units_col} IS NULL), 0) FROM items WHERE state = 'completed'"
    ).fetchone()
    units_col = "i." + units_col if spend.use_units else units_col
    images, pixels, largest = conn.execute(
        f"SELECT coalesce(sum({units_col} IS NULL), 0),"
        f" coalesce(sum(CASE WHEN {units_col} IS NULL THEN o.width * o.height END), 0),"
        " coalesce(max(o.width * o.height), 0) FROM outputs AS o"
        " JOIN items AS i ON i.key = o.item_key WHERE i.state = 'completed'"
    ).fetchone()
    spend.largest = max(spend.largest, int(largest))
    spend.spent += float(units) * spend.unit_price + spend.price.cost(int(images), int(pixels))
    spend.billed += int(billed)
    spend.estimated += int(estimated)


# The pending items of the manifest (those `Ledger.iter_work` yields as pending), grouped by
# what `output_basis` reads of their request: ``num_images`` and ``image_size`` (as a JSON
# array), and the first input when the output takes its size (no ``image_size``) and it is an
# inline or local image — a remote input's size is unknown, whatever its URL.
_WORK_BASIS = """
    SELECT json_extract(request, '$.num_images', '$.image_size'),
        CASE WHEN json_extract(request, '$.image_size') IS NULL
            AND (json_extract(request, '$.image_urls[0]') GLOB 'data:*'
                 OR json_extract(request, '$.image_urls[0]') GLOB 'local:*')
        THEN json_extract(request, '$.image_urls[0]') END,
        count(*)
    FROM items WHERE state = 'pending' AND in_manifest = 1 AND (pilot = 1 OR ?1 = 0)
    GROUP BY 1, 2
"""


def work_estimate(ledger: Ledger, *, pilot: bool = False) -> Estimate:
    """Requests a run would send now: the pending items of the manifest (submitted ones are
    already at fal and are re-attached, not sent again); `pilot`: of a pilot's sample only.

    One aggregate query (SQLite's JSON functions read the requests; a million items take
    seconds, not the minute that decoding each row in Python takes), then `output_basis` once
    per distinct basis. Without SQLite's JSON functions: `work_estimate_by_rows`.
    """
    sizes = _known_sizes(ledger)
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        groups = conn.execute(_WORK_BASIS, (int(pilot),)).fetchall()
    except sqlite3.OperationalError as exc:
        if not str(exc).startswith("no such function: json"):  # SQLite without JSON1
            raise
        return work_estimate_by_rows(ledger, pilot=pilot)
    finally:
        conn.close()
    estimate = Estimate()
    for basis, first, count in groups:
        images, size = json.loads(basis)
        payload = {"num_images": images, "image_size": size, "image_urls": [first]}
        estimate.add(*output_basis(payload, sizes.get), times=count)
    return estimate


def work_estimate_by_rows(ledger: Ledger, *, pilot: bool = False) -> Estimate:
    """`work_estimate`, one row at a time in Python: each request decoded."""
    sizes = _known_sizes(ledger)
    estimate = Estimate()
    for row in ledger.iter_work(pilot=pilot):
        if row.state == "pending":
            estimate.add(*output_basis(row.payload, sizes.get))
    return estimate
