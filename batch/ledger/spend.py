"""What a job has spent and holds, read from the ledger with the job's unit price; what a run
would send. The budget (`batch.pipeline.budget`), `status` and the run summary read it.

- completed items cost what their outputs are: width × height × count, from the ledger;
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

    @property
    def held(self) -> float:
        return sum(self.holds.values())

    def estimate(self, payload: Mapping[str, Any]) -> float:
        """What a request is expected to cost (see the module docstring for unknown sizes)."""
        images, pixels = output_basis(payload, self.sizes.get)
        if pixels is None:
            pixels = images * max(self.largest, UNKNOWN_IMAGE_PIXELS)
        return self.price.cost(images, pixels)

    def add_completed(self, outputs: Iterable[OutputRecord]) -> None:
        pixels = [(o.width or 0) * (o.height or 0) for o in outputs]
        self.largest = max([self.largest, *pixels])
        self.spent += self.price.cost(len(pixels), sum(pixels))


def _known_sizes(ledger: Ledger) -> dict[str, tuple[int, int]]:
    return {f.sha256: (f.width, f.height) for f in ledger.uploads.known_files().values()}


def job_spend(ledger: Ledger, price: PriceSpec) -> JobSpend:
    """Spend and holds as the ledger has them now (one read transaction)."""
    spend = JobSpend(price, _known_sizes(ledger))
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("BEGIN")
        images, pixels, largest = conn.execute(
            "SELECT count(*), coalesce(sum(o.width * o.height), 0),"
            " coalesce(max(o.width * o.height), 0) FROM outputs AS o"
            " JOIN items AS i ON i.key = o.item_key WHERE i.state = 'completed'"
        ).fetchone()
        spend.largest = int(largest)
        spend.spent = price.cost(int(images), int(pixels))
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
            else:
                spend.holds[key] = cost
        conn.execute("COMMIT")
    finally:
        conn.close()
    return spend


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
    FROM items WHERE state = 'pending' AND in_manifest = 1
    GROUP BY 1, 2
"""


def work_estimate(ledger: Ledger) -> Estimate:
    """Requests a run would send now: the pending items of the manifest (submitted ones are
    already at fal and are re-attached, not sent again).

    One aggregate query (SQLite's JSON functions read the requests; a million items take
    seconds, not the minute that decoding each row in Python takes), then `output_basis` once
    per distinct basis. Without SQLite's JSON functions: `work_estimate_by_rows`.
    """
    sizes = _known_sizes(ledger)
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        groups = conn.execute(_WORK_BASIS).fetchall()
    except sqlite3.OperationalError as exc:
        if not str(exc).startswith("no such function: json"):  # SQLite without JSON1
            raise
        return work_estimate_by_rows(ledger)
    finally:
        conn.close()
    estimate = Estimate()
    for basis, first, count in groups:
        images, size = json.loads(basis)
        payload = {"num_images": images, "image_size": size, "image_urls": [first]}
        estimate.add(*output_basis(payload, sizes.get), times=count)
    return estimate


def work_estimate_by_rows(ledger: Ledger) -> Estimate:
    """`work_estimate`, one row at a time in Python: each request decoded."""
    sizes = _known_sizes(ledger)
    estimate = Estimate()
    for row in ledger.iter_work():
        if row.state == "pending":
            estimate.add(*output_basis(row.payload, sizes.get))
    return estimate
