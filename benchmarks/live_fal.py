"""Money on fal's live behaviours: a deadline that cancels slow requests, and an account that
runs out of credit (fal-protocol.md §11 rows 1 and 4), against the simulator in its own process.

- deadline: N items (default 200), concurrency 20, lognormal service (mean 0.5 s), 10% of the
  requests 20 times slower, `deadline: 3`. fal's cancel only signals a running request, which
  then finishes and is billed. Figures: items paid twice (target 0), billed results not used
  (money wasted, target 0), cancels, cancelled requests whose result was used.
- locked account: 60 items, a balance worth exactly 20 requests. Figures: exit code (6), the
  403s fal answered (target <= 3), completed / pending / failed (failed = 0).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import yaml
from common import (
    IMAGE_SIZE,
    SimProcess,
    arguments,
    exit_on_sigterm,
    machine,
    print_table,
    write_json,
    write_manifest,
)

from batch import JobSpec, run_job
from batch.cli.collector import fewer_collections
from batch.fal import Credentials

CONCURRENCY = 20
OUTPUT_PIXELS = IMAGE_SIZE["width"] * IMAGE_SIZE["height"]  # every request's output
FIREREDS_PRICE = 0.0325  # USD per megapixel, the simulator's default (fal's llms.txt)


async def run(sim: SimProcess, manifest: Path, out: Path, **settings: Any) -> Any:
    spec = JobSpec.for_manifest(
        manifest, queue=sim.url, concurrency=CONCURRENCY, output=out, **settings
    )
    with fewer_collections():  # as the CLI runs it
        return await run_job(spec, credentials=Credentials(sim.key))


def deadline(n: int, folder: Path) -> dict[str, Any]:
    plan = folder / "faults.yaml"
    rule = {"kind": "straggler", "route": "submit", "factor": 20, "rate": 0.1}
    plan.write_text(yaml.safe_dump({"seed": 4, "rules": [rule]}), encoding="utf-8")
    extra = ("--seed", "4", "--faults", str(plan))
    with SimProcess(capacity=CONCURRENCY, latency="lognormal:0.5,0.5", extra=extra) as sim:
        manifest = write_manifest(folder / "deadline.csv", n)
        summary = asyncio.run(run(sim, manifest, folder / "deadline", deadline=3))
        counters = sim.counters()
    return {
        "items": n,
        "exit_code": int(summary.exit_code),
        "completed": summary.counts["completed"],
        "slow_requests": counters["faults"].get("straggler", 0),
        "cancelled": summary.stats["cancelled"],
        "cancelled_result_used": summary.stats["completed_after_cancel"],
        "paid_twice": counters["paid_twice"],
        "billed_not_used": counters["billed_requests"] - summary.counts["completed"],
        "submits": counters["accepted_submits"],
    }


def locked(folder: Path) -> dict[str, Any]:
    balance = 20 * FIREREDS_PRICE * OUTPUT_PIXELS / 1e6
    with SimProcess(
        capacity=CONCURRENCY, latency="fixed:0.05", extra=("--balance-usd", repr(balance))
    ) as sim:
        manifest = write_manifest(folder / "locked.csv", 60)
        summary = asyncio.run(run(sim, manifest, folder / "locked"))
        counters = sim.counters()
    return {
        "exit_code": int(summary.exit_code),
        "refused_403": int(counters["responses"].get("submit", {}).get("403", 0)),
        "billed": counters["billed_requests"],
        "completed": summary.counts["completed"],
        "pending": summary.counts["pending"],
        "failed": summary.counts["failed"],
        "message": summary.message,
    }


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=200)
    args = parser.parse_args()
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        cut = deadline(args.n, Path(tmp))
        lock = locked(Path(tmp))
    print_table(
        f"deadline 3 s: {cut['items']} items, 10% of requests 20x slower (targets: 0, 0)",
        ["paid twice", "billed, not used", "slow", "cancelled", "result used", "submits", "exit"],
        [
            [
                cut["paid_twice"],
                cut["billed_not_used"],
                cut["slow_requests"],
                cut["cancelled"],
                cut["cancelled_result_used"],
                cut["submits"],
                cut["exit_code"],
            ]
        ],
    )
    print_table(
        "locked account after 20 billed requests (targets: exit 6, 403s <= 3, failed 0)",
        ["exit", "403s", "billed", "completed", "pending", "failed"],
        [
            [
                lock["exit_code"],
                lock["refused_403"],
                lock["billed"],
                lock["completed"],
                lock["pending"],
                lock["failed"],
            ]
        ],
    )
    print(f"  {lock['message']}")
    write_json(args.json, {"deadline": cut, "locked": lock, **machine()})


if __name__ == "__main__":
    main()
