"""`firered-batch status`: a job's state from its ledger, without network.

Counts by state, failures grouped by error kind with an example each, the latest run (live or
finished) with its throughput and, while it is live, an ETA; with a price, the spend so far
(`batch.ledger.spend.job_spend`: from fal's billable units where the ledger has them, else
estimated); and, while fal refuses the account new work (out of credit), one line that says so.

A run is *live* when the runs table has it without an end and the process that wrote the
output folder's lock (`batch.outputs.lock`) is still alive; a run without an end whose process
is gone was killed (``interrupted``). Status never takes the lock itself, so it cannot make a
starting run exit 5.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch.ledger import ACCOUNT_LOCKED_META, FailureGroup, Ledger
from batch.ledger.spend import JobSpend, job_spend
from batch.manifest.pricing import PriceSpec, usd

STATES = ("completed", "failed", "submitted", "pending")
REASON_CHARS = 300


@dataclass
class RunInfo:
    """The latest run: when, how far, how fast."""

    id: int
    started_at: float
    ended_at: float | None
    exit_code: int | None
    live: bool
    done: int  # items this run finished (completed or failed)
    elapsed: float
    remaining: int  # work left in the ledger (pending + submitted in the manifest)

    @property
    def state(self) -> str:
        if self.live:
            return "live"
        return "finished" if self.ended_at is not None else "interrupted"

    @property
    def items_per_second(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until the live run is done at its rate so far; None if unknown or over."""
        if not self.live or not self.remaining:
            return None
        rate = self.items_per_second
        return self.remaining / rate if rate > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "exit_code": self.exit_code,
            "done": self.done,
            "elapsed_seconds": round(self.elapsed, 3),
            "items_per_second": round(self.items_per_second, 4),
            "remaining": self.remaining,
            "eta_seconds": None if self.eta is None else round(self.eta, 1),
        }


@dataclass
class JobStatus:
    name: str
    output: Path
    counts: dict[str, int]
    failures: list[FailureGroup]
    run: RunInfo | None = None
    spent: float | None = None
    price: PriceSpec | None = None
    spend: JobSpend | None = None
    account_locked: str | None = None  # fal's reason, while it refuses the account new work
    waiting: int = 0  # pending items of the manifest (what a locked account holds back)
    recovered: int = 0  # lost submit answers found in fal's request history
    resubmitted: int = 0  # lost submit answers sent again (possible_duplicate)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.name,
            "output": str(self.output),
            "total": self.total,
            "counts": self.counts,
            "failures": [
                {
                    "kind": f.kind,
                    "count": f.count,
                    "example_key": f.example_key,
                    "example_message": f.example_message,
                }
                for f in self.failures
            ],
            "run": None if self.run is None else self.run.as_dict(),
            "spent_usd": self.spent,
            "spent_billed_items": None if self.spend is None else self.spend.billed,
            "account_locked": self.account_locked,
            "lost_submits": {"recovered": self.recovered, "resubmitted": self.resubmitted},
        }

    def text(self) -> str:
        total = self.total
        lines = [f"{self.name}: {total} items ({self.output})"]
        for state in STATES:
            n = self.counts.get(state, 0)
            share = f"{n / total:6.1%}" if total else ""
            lines.append(f"  {state:<10} {n:>8}  {share}".rstrip())
        if self.failures:
            lines.append("failures by kind:")
            width = max(len(f.kind) for f in self.failures)
            for f in self.failures:
                message = " ".join(f.example_message.split())
                if len(message) > 160:
                    message = message[:159] + "…"
                lines.append(f"  {f.kind:<{width}} {f.count:>6}  e.g. {f.example_key}: {message}")
        if self.run is not None:
            lines.append(_run_line(self.run))
        if self.spent is not None and self.price is not None:
            basis = (
                self.spend.basis()
                if self.spend is not None
                else f"estimate at {self.price.describe()}"
            )
            lines.append(f"spent: {usd(self.spent)} ({basis})")
        if self.recovered or self.resubmitted:
            lines.append(
                f"lost submit answers: {self.recovered} found in fal's request history"
                f" (not paid twice), {self.resubmitted} sent again (possible_duplicate)"
            )
        if self.account_locked is not None:
            lines.append(_locked_line(self.account_locked, self.waiting))
        return "\n".join(lines)


def _locked_line(reason: str, waiting: int) -> str:
    text = " ".join(reason.split()) or "locked"
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 1] + "…"
    items = "1 item waits" if waiting == 1 else f"{waiting} items wait"
    return f"waiting on the fal account: {text} — top up, then run the same command again ({items})"


def _run_line(run: RunInfo) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_at))
    rate = f"{run.done} items done, {run.items_per_second:.2f} items/s"
    if run.live:
        eta = "?" if run.eta is None else duration(run.eta)
        return (
            f"run {run.id}: live since {when} ({duration(run.elapsed)}), {rate}, "
            f"{run.remaining} to go, ETA {eta}"
        )
    if run.ended_at is None:
        return f"run {run.id}: started {when}, interrupted (no end recorded), {rate}"
    left = f", {run.remaining} left to do" if run.remaining else ""
    return f"run {run.id}: {when}, {duration(run.elapsed)}, exit {run.exit_code}, {rate}{left}"


def duration(seconds: float) -> str:
    """``42 s``, ``3m 05s``, ``2h 04m``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def job_status(
    ledger: Ledger,
    *,
    name: str,
    price: PriceSpec | None = None,
    endpoint: str | None = None,
    now: float | None = None,
) -> JobStatus:
    """Everything `status` shows, read from the ledger (and the lock file's pid)."""
    status = JobStatus(name, ledger.output_dir, ledger.counts(), ledger.failures(limit=20))
    status.run = _latest_run(ledger, time.time() if now is None else now)
    status.recovered, status.resubmitted = ledger.recovery_counts()
    if price is not None:
        status.price = price
        status.spend = job_spend(ledger, price, endpoint)
        status.spent = status.spend.spent
    status.account_locked = ledger.get_meta(ACCOUNT_LOCKED_META)
    if status.account_locked is not None:
        status.waiting = _pending_in_manifest(ledger)
    return status


def _pending_in_manifest(ledger: Ledger) -> int:
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        row = conn.execute(
            "SELECT count(*) FROM items WHERE state = 'pending' AND in_manifest = 1"
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


def _latest_run(ledger: Ledger, now: float) -> RunInfo | None:
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        row = conn.execute(
            "SELECT id, started_at, ended_at, exit_code FROM runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        run_id, started_at, ended_at, exit_code = row
        done = conn.execute(
            "SELECT count(*) FROM items WHERE run_id = ? AND state IN ('completed', 'failed')",
            (run_id,),
        ).fetchone()[0]
        remaining = conn.execute(
            "SELECT count(*) FROM items WHERE state = 'submitted'"
            " OR (state = 'pending' AND in_manifest = 1)"
        ).fetchone()[0]
    finally:
        conn.close()
    live = ended_at is None and lock_holder_alive(ledger.output_dir)
    end = ended_at if ended_at is not None else now
    return RunInfo(
        run_id, started_at, ended_at, exit_code, live, int(done), end - started_at, remaining
    )


def lock_holder_alive(output_dir: Path) -> bool:
    """Whether the process whose pid the output folder's lock file holds is running."""
    try:
        text = (output_dir / ".lock").read_text(encoding="ascii", errors="replace").strip()
        pid = int(text)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def review_lines(ledger: Ledger) -> list[str]:
    """What `status` says of people's reviews (`firered-batch review`): ``reviewed: N approved,
    N rejected, N to review`` (output images of completed items), and the rejected items; no
    line before anyone reviewed anything."""
    reviews = ledger.reviews
    if not reviews.last_event():
        return []
    counts = reviews.review_counts()
    lines = [
        f"reviewed: {counts.approved} approved, {counts.rejected} rejected,"
        f" {counts.unreviewed} to review"
    ]
    rejected = reviews.rejected_items()
    if rejected:
        shown = ", ".join(rejected[:5]) + (
            f", … ({len(rejected)} items)" if len(rejected) > 5 else ""
        )
        lines.append(f"  rejected: {shown}")
    return lines


def pilot_lines(ledger: Ledger) -> list[str]:
    """What `status` says of a pilot run (`run --sample`): its items by state; none without."""
    counts = ledger.pilot_counts()
    if not counts:
        return []
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return [f"pilot: {sum(counts.values())} items ({states}); `status` above counts all items"]
