"""What a run reports when it ends: `RunSummary` (its `text()` is the CLI's closing lines)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.errors import ExitCode
from batch.fal import AccountLockedError
from batch.job import JobSpec
from batch.ledger import ACCOUNT_LOCKED_META, Ledger
from batch.outputs import DiskFullError
from batch.pipeline.dispatch import StopSignal
from batch.pipeline.events import event
from batch.report import REPORT_NAME

log = logging.getLogger("batch.run")
OUTPUTS = ("images", "ledger.sqlite", "results.csv", "results.jsonl", REPORT_NAME)


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
    recovered: int = 0  # in the whole ledger: lost submits found in fal's request history
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
            f"{self.stats.get('possible_duplicates', 0)} possible duplicates, "
            f"{self.stats.get('recovered', 0)} lost submits recovered",
            f"  wall time {self.wall_time:.1f} s, {self.items_per_second:.1f} items/s, "
            f"{self.status_requests_per_item:.2f} status requests per item",
            *self._notes(),
            *self.cost,
            *self._paths(),
        ]
        return "\n".join(lines)

    def _existing(self) -> dict[str, Path]:
        """The run's outputs that exist (a dry run on a new folder writes nothing)."""
        paths = {name: self.output_dir / name for name in OUTPUTS}
        return {name: path for name, path in paths.items() if path.exists()}

    def _paths(self) -> list[str]:
        existing = self._existing()
        labels = {"images": "images", "ledger.sqlite": "ledger", "results.csv": "results"}
        labels[REPORT_NAME] = "report"
        more = {"results.csv": " and results.jsonl"}
        return [
            f"  {label}: {existing[name]}{more.get(name, '')}"
            for name, label in labels.items()
            if name in existing
        ]

    def as_dict(self) -> dict[str, Any]:
        """The summary as one JSON object (`--log-format json`)."""
        out = self.output_dir
        return {
            "event": "summary",
            "job": self.name,
            "exit_code": int(self.exit_code),
            "message": self.message,
            "counts": self.counts,
            "this_run": self.stats,
            "plan": self.plan,
            "wall_seconds": round(self.wall_time, 3),
            "items_per_second": round(self.items_per_second, 3),
            "status_requests_per_item": round(self.status_requests_per_item, 3),
            "possible_duplicates": self.possible_duplicates,
            "recovered": self.recovered,
            "cost": [line.strip() for line in self.cost],
            "notes": [line.strip() for line in self._notes()],
            "warnings": self.warnings,
            "output": str(out),
            "paths": {name: str(path) for name, path in self._existing().items()},
        }

    def _notes(self) -> list[str]:
        notes = []
        if self.plan.get("missing"):
            notes.append(
                f"  {self.plan['missing']} items in the ledger are no longer in the manifest "
                "(kept; see results.csv, in_manifest=false)"
            )
        if self.stats.get("left"):
            notes.append(
                f"  {self.stats['left']} items left as they were: fal gave no answer about their "
                "requests in this run (they may still run, so they are never sent again); "
                "the same command re-attaches"
            )
        if self.recovered:
            notes.append(
                f"  {self.recovered} submits whose answer was lost were found in fal's request "
                "history and re-attached, not paid twice (results.csv: recovered)"
            )
        if self.possible_duplicates:
            notes.append(
                f"  {self.possible_duplicates} items may have been submitted twice "
                "(an answer was lost in transit and fal's request history did not show it; "
                "results.csv: possible_duplicate)"
            )
        return notes


def log_start(spec: JobSpec, to_do: int, total: int) -> None:
    """The run's first line: the job, how much there is to do, and the settings that matter."""
    log.info(
        "start %s: %d of %d items to do (manifest %s), endpoint %s, queue %s, concurrency %d,"
        " wait %s, output %s",
        *(spec.name, to_do, total, spec.manifest, spec.endpoint, spec.queue, spec.concurrency),
        *(spec.wait, spec.output),
        extra=event(
            "start",
            job=spec.name,
            to_do=to_do,
            total=total,
            manifest=str(spec.manifest),
            endpoint=spec.endpoint,
            queue=spec.queue,
            concurrency=spec.concurrency,
            wait=spec.wait,
            output=str(spec.output),
        ),
    )


class Halt:
    """Why a run stopped admitting on its own, if it did: fal locked the account (exit 6), or
    the disk filled up (exit 4). Either stops admitting once and lets what runs finish."""

    def __init__(self, stop: StopSignal, ledger: Ledger) -> None:
        self.stop = stop
        self.ledger = ledger
        self.locked: AccountLockedError | None = None
        self.full: DiskFullError | None = None

    def account_locked(self, exc: AccountLockedError) -> None:
        if self.locked is None:  # once: a second stop request would abort what is running
            log.error("fal refused new work: %s", exc.reason)
            self.ledger.set_meta(ACCOUNT_LOCKED_META, exc.reason)
            self.locked = exc
            self.stop.request("account locked")

    def disk_full(self, exc: DiskFullError) -> None:
        if self.full is None:
            log.error("%s", exc)
            self.full = exc
            self.stop.request("disk full")

    def outcome(
        self, counts: dict[str, int], otherwise: tuple[ExitCode, str]
    ) -> tuple[ExitCode, str]:
        """The run's exit code and message: the halt's, else `otherwise`."""
        if self.full is not None:
            return ExitCode.STOPPED, f"stopped: {self.full}"
        if self.locked is not None:
            return ExitCode.ACCOUNT_LOCKED, locked_message(self.locked, counts)
        return otherwise


def locked_message(exc: AccountLockedError, counts: dict[str, int]) -> str:
    return (
        f"fal refused new work: {exc.reason}; what was running was collected, "
        f"{counts.get('pending', 0)} items wait: top up, then run the same command again"
    )
