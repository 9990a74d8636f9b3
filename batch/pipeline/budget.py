"""The budget cap: before each submit, may this item still be paid for?

Spend is counted over the whole job (its ledger), not one run, so a run started again with the
same cap does not spend it twice:

- completed items cost what their outputs are: width × height × count, from the ledger;
- items whose request succeeded but whose download failed (kind ``download``) are paid for:
  their estimate;
- items in flight — `submitted`, or a submit on its way (``submit_started_at``) — are held at
  their estimate until they finish: a completion turns the hold into the actual cost, a
  failure or a retry releases it (fal bills successful requests).

An item is admitted only if spent + held + its own estimate stays within ``max_usd``. The first
refusal calls ``on_stop`` (the run stops admitting and drains, as on a first Ctrl-C, and exits
4), so later items are not admitted either. An output size that is not known before the run
(a remote input without ``image_size``) is held at the largest output image the job has
produced so far, at least `UNKNOWN_IMAGE_PIXELS`.

The check and the ledger's ``mark_submitting`` run in one step of the event loop (nothing is
awaited between them), so concurrent items cannot both squeeze under the cap.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from batch.ledger import REATTACH_KINDS, ItemRow, Ledger
from batch.manifest.pricing import BudgetSpec, Estimate, PriceSpec, output_basis, usd

UNKNOWN_IMAGE_PIXELS = 1_000_000
_EPSILON = 1e-9  # so that 5 × $0.01 fits in a $0.05 budget


class Budget:
    def __init__(
        self,
        ledger: Ledger,
        price: PriceSpec,
        max_usd: float,
        on_stop: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.ledger = ledger
        self.price = price
        self.max_usd = max_usd
        self.on_stop = on_stop
        self.spent = 0.0
        self.stopped = False
        self.refused = 0
        self._holds: dict[str, float] = {}
        self._largest = 0  # pixels of the largest output image seen
        self._sizes = {f.sha256: (f.width, f.height) for f in ledger.uploads.known_files().values()}
        self._load()

    def __repr__(self) -> str:
        return (
            f"Budget(spent={usd(self.spent)}, held={usd(self.held)} in {len(self._holds)} items,"
            f" max={usd(self.max_usd)}, stopped={self.stopped})"
        )

    @property
    def held(self) -> float:
        return sum(self._holds.values())

    def estimate(self, payload: Mapping[str, Any]) -> float:
        """What a request is expected to cost (see the module docstring for unknown sizes)."""
        images, pixels = output_basis(payload, self._sizes.get)
        if pixels is None:
            pixels = images * max(self._largest, UNKNOWN_IMAGE_PIXELS)
        return self.price.cost(images, pixels)

    def admit(self, row: ItemRow) -> bool:
        """Hold this item's estimate and say yes, or say no (and stop the run, once)."""
        if self.stopped:
            return False
        self._settle()
        cost = self.estimate(row.payload)
        committed = self.spent + sum(v for k, v in self._holds.items() if k != row.key)
        if committed + cost <= self.max_usd + _EPSILON:
            self._holds[row.key] = cost
            return True
        self.stopped = True
        self.refused += 1
        self.on_stop(
            f"budget: {usd(committed)} spent or in flight of max_usd {usd(self.max_usd)}, "
            f"the next item ({row.key}) would cost {usd(cost)}; raise budget.max_usd to continue"
        )
        return False

    def _settle(self) -> None:
        """Turn holds of items that have finished into spend (or release them)."""
        for key in list(self._holds):
            row = self.ledger.get(key)
            if row is not None and (
                row.state == "submitted"
                or (row.state == "pending" and row.submit_started_at is not None)
            ):
                continue
            hold = self._holds.pop(key)
            if row is None:
                continue
            if row.state == "completed":
                outputs = self.ledger.outputs(key)
                pixels = [(o.width or 0) * (o.height or 0) for o in outputs]
                self._largest = max([self._largest, *pixels])
                self.spent += self.price.cost(len(outputs), sum(pixels))
            elif row.state == "failed" and row.error_kind in REATTACH_KINDS:
                self.spent += hold

    def _load(self) -> None:
        """Spend and holds as the ledger has them when the run starts (one read)."""
        conn = sqlite3.connect(self.ledger.path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("BEGIN")
            images, pixels, largest = conn.execute(
                "SELECT count(*), coalesce(sum(o.width * o.height), 0),"
                " coalesce(max(o.width * o.height), 0) FROM outputs AS o"
                " JOIN items AS i ON i.key = o.item_key WHERE i.state = 'completed'"
            ).fetchone()
            self._largest = int(largest)
            self.spent = self.price.cost(int(images), int(pixels))
            marks = ", ".join("?" * len(REATTACH_KINDS))
            rows = conn.execute(
                "SELECT key, request, state FROM items WHERE state = 'submitted'"
                " OR (state = 'pending' AND submit_started_at IS NOT NULL)"
                f" OR (state = 'failed' AND error_kind IN ({marks}))",
                REATTACH_KINDS,
            )
            for key, request, state in rows:
                cost = self.estimate(json.loads(request))
                if state == "failed":
                    self.spent += cost
                else:
                    self._holds[key] = cost
            conn.execute("COMMIT")
        finally:
            conn.close()


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
    sizes = {f.sha256: (f.width, f.height) for f in ledger.uploads.known_files().values()}
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
    sizes = {f.sha256: (f.width, f.height) for f in ledger.uploads.known_files().values()}
    estimate = Estimate()
    for row in ledger.iter_work():
        if row.state == "pending":
            estimate.add(*output_basis(row.payload, sizes.get))
    return estimate


def cost_lines(
    ledger: Ledger, price: PriceSpec | None, max_usd: float | None, *, dry_run: bool = False
) -> list[str]:
    """The run summary's lines about cost: what a dry run would send, and the job's spend."""
    lines: list[str] = []
    work = work_estimate(ledger) if dry_run else None
    if work is not None:
        lines.append(f"  to send: {work.text(price)}")
    if price is None:
        return lines
    budget = Budget(ledger, price, max_usd if max_usd is not None else float("inf"))
    text = f"  spent: {usd(budget.spent)}"
    if budget.held:
        text += f" + {usd(budget.held)} in flight"
    text += f" (estimate at {price.describe()})"
    if max_usd is not None:
        text += f"; budget {usd(max_usd)}"
        if work is not None:
            left = max_usd - budget.spent - budget.held - (work.cost(price) or 0.0)
            text += ": enough" if left >= -_EPSILON else f": {usd(-left)} short, the run will stop"
    lines.append(text)
    return lines


def make_budget(
    ledger: Ledger,
    price: PriceSpec | None,
    budget: BudgetSpec | None,
    on_stop: Callable[[str], None],
) -> Budget | None:
    """The run's `Budget`, if the job has one (a budget always has a price: `JobSpec`)."""
    if budget is None or price is None:
        return None
    return Budget(ledger, price, budget.max_usd, on_stop)
