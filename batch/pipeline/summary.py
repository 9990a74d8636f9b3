"""What a run reports when it ends: `RunSummary` (its `text()` is the CLI's closing lines)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.errors import ExitCode
from batch.fal import AccountLockedError
from batch.report import REPORT_NAME


@dataclass
class RunSummary:
    name: str
    output_dir: Path
    exit_code: ExitCode
    counts: dict[str, int] = field(default_factory=dict)
    plan: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    possible_duplicates: int = 0  # in the whole ledger, not only this run
    cost: list[str] = field(default_factory=list)  # with a price: spend (and a dry run's estimate)

    @property
    def items_per_second(self) -> float:
        done = int(self.stats.get("completed", 0)) + int(self.stats.get("failed", 0))
        return done / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def status_requests_per_item(self) -> float:
        done = int(self.stats.get("completed", 0)) + int(self.stats.get("failed", 0))
        return int(self.stats.get("status_requests", 0)) / max(1, done)

    def text(self) -> str:
        failed = self.stats.get("failed_by_kind") or {}
        by_kind = ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "none"
        lines = [
            f"run {self.name}: {self.message}" if self.message else f"run {self.name}",
            f"  items: {self.counts.get('completed', 0)} completed, "
            f"{self.counts.get('failed', 0)} failed, {self.counts.get('pending', 0)} pending, "
            f"{self.counts.get('submitted', 0)} submitted",
            f"  this run: {self.stats.get('completed', 0)} completed, failed by kind: {by_kind}, "
            f"{self.stats.get('retried', 0)} retried, "
            f"{self.stats.get('possible_duplicates', 0)} possible duplicates",
            f"  wall time {self.wall_time:.1f} s, {self.items_per_second:.1f} items/s, "
            f"{self.status_requests_per_item:.2f} status requests per item",
            *self._notes(),
            *self.cost,
            f"  images: {self.output_dir / 'images'}",
            f"  ledger: {self.output_dir / 'ledger.sqlite'}",
            f"  results: {self.output_dir / 'results.csv'} and results.jsonl",
            *[f"  report: {p}" for p in [self.output_dir / REPORT_NAME] if p.exists()],
        ]
        return "\n".join(lines)

    def _notes(self) -> list[str]:
        notes = []
        if self.plan.get("missing"):
            notes.append(
                f"  {self.plan['missing']} items in the ledger are no longer in the manifest "
                "(kept; see results.csv, in_manifest=false)"
            )
        if self.possible_duplicates:
            notes.append(
                f"  {self.possible_duplicates} items may have been submitted twice "
                "(an answer was lost in transit; results.csv: possible_duplicate)"
            )
        return notes


def locked_message(exc: AccountLockedError, counts: dict[str, int]) -> str:
    return (
        f"fal refused new work: {exc.reason}; what was running was collected, "
        f"{counts.get('pending', 0)} items wait: top up, then run the same command again"
    )
