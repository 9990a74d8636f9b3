"""The budget cap: before each submit, may this item still be paid for?

Spend is counted over the whole job (its ledger, `batch.ledger.spend`), not one run, so a run
started again with the same cap does not spend it twice. A completion turns an item's hold into
its actual cost; a failure or a retry releases it.

An item is admitted only if spent + held + its own estimate stays within ``max_usd``. The first
refusal calls ``on_stop`` (the run stops admitting and drains, as on a first Ctrl-C, and exits
4), so later items are not admitted either.

An admitted item is held from the moment it is admitted (while it waits for the submit rate and
its intent is committed), so concurrent items cannot both squeeze under the cap; one that a stop
turns back is released.
"""

from __future__ import annotations

from collections.abc import Callable

from batch.ledger import REATTACH_KINDS, ItemRow, Ledger
from batch.ledger.spend import EPSILON, job_spend, work_estimate
from batch.manifest.pricing import BudgetSpec, PriceSpec, usd


class Budget:
    def __init__(
        self,
        ledger: Ledger,
        price: PriceSpec,
        max_usd: float,
        on_stop: Callable[[str], None] = lambda reason: None,
        endpoint: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.price = price
        self.max_usd = max_usd
        self.on_stop = on_stop
        self.stopped = False
        self.refused = 0
        self._spend = job_spend(ledger, price, endpoint)  # spend and holds as the run starts
        self._holds = self._spend.holds
        self._reserved: set[str] = set()  # admitted, intent not yet in the ledger

    def __repr__(self) -> str:
        return (
            f"Budget(spent={usd(self.spent)}, held={usd(self.held)} in {len(self._holds)} items,"
            f" max={usd(self.max_usd)}, stopped={self.stopped})"
        )

    @property
    def spent(self) -> float:
        return self._spend.spent

    @property
    def held(self) -> float:
        return sum(self._holds.values())

    def admit(self, row: ItemRow) -> bool:
        """Hold this item's estimate and say yes, or say no (and stop the run, once)."""
        if self.stopped:
            return False
        self._settle()
        cost = self._spend.estimate(row.payload)
        committed = self.spent + sum(v for k, v in self._holds.items() if k != row.key)
        if committed + cost <= self.max_usd + EPSILON:
            self._holds[row.key] = cost
            self._reserved.add(row.key)
            return True
        self.stopped = True
        self.refused += 1
        self.on_stop(
            f"budget: {usd(committed)} spent or in flight of max_usd {usd(self.max_usd)}, "
            f"the next item ({row.key}) would cost {usd(cost)}; raise budget.max_usd to continue"
        )
        return False

    def sending(self, key: str) -> None:
        """The item's intent is in the ledger: from now on the ledger says whether it is held."""
        self._reserved.discard(key)

    def release(self, key: str) -> None:
        """An admitted item that is not sent after all (the run is stopping)."""
        if key in self._reserved:
            self._reserved.discard(key)
            self._holds.pop(key, None)

    def _settle(self) -> None:
        """Turn holds of items that have finished into spend (or release them)."""
        for key in list(self._holds):
            if key in self._reserved:
                continue  # admitted and on its way to a submit: held whatever the ledger says
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
                self._spend.add_completed(
                    self.ledger.outputs(key), billable_units=row.billable_units
                )
            elif row.state == "failed" and row.error_kind in REATTACH_KINDS:
                self._spend.spent += hold


def cost_lines(
    ledger: Ledger,
    price: PriceSpec | None,
    max_usd: float | None,
    *,
    endpoint: str | None = None,
    dry_run: bool = False,
    pilot: bool = False,
) -> list[str]:
    """The run summary's lines about cost: what a dry run would send (`pilot`: of a pilot's
    sample), and the job's spend."""
    lines: list[str] = []
    work = work_estimate(ledger, pilot=pilot) if dry_run else None
    if work is not None:
        lines.append(f"  to send: {work.text(price)}")
    if price is None:
        return lines
    spend = job_spend(ledger, price, endpoint)
    text = f"  spent: {usd(spend.spent)}"
    if spend.held:
        text += f" + {usd(spend.held)} in flight"
    text += f" ({spend.basis()})"
    if max_usd is not None:
        text += f"; budget {usd(max_usd)}"
        if work is not None:
            left = max_usd - spend.spent - spend.held - (work.cost(price) or 0.0)
            text += ": enough" if left >= -EPSILON else f": {usd(-left)} short, the run will stop"
    lines.append(text)
    return lines


def make_budget(
    ledger: Ledger,
    price: PriceSpec | None,
    budget: BudgetSpec | None,
    on_stop: Callable[[str], None],
    endpoint: str | None = None,
) -> Budget | None:
    """The run's `Budget`, if the job has one (the run stops before sending when it has a
    budget but no price)."""
    if budget is None or price is None:
        return None
    return Budget(ledger, price, budget.max_usd, on_stop, endpoint)
