"""Strict concurrency (`queue_ahead: 0`): fal's slots kept busy with nothing queued ahead.

1,500 items (by default), lognormal service times (mean 2 s), simulator capacity 40, our
runner with concurrency 40 and `queue_ahead: 0`, so that at most 40 requests are at fal at
once and each free slot waits for this client to notice an end and submit the next request.
Simulator in a separate process, fresh and seeded alike for each row, so the k-th submitted
job gets the same service time in every row.

- efficiency = oracle makespan / actual makespan, as in `makespan.py` (oracle on 40 slots).
- status requests per item = the simulator's status (and status stream) requests / items.
- refill gap: from a completion at the simulator to the submit that refills its slot (the
  (40 + k)-th submit after the k-th completion): median and 90th percentile, in ms.
- peak at fal: the most requests the simulator held at once (40 when nothing queued ahead).
- client CPU ms per item: this process's CPU time during the run (simulator excluded).

Baselines, in the same run: a plain asyncio loop with a semaphore of 40 that polls every 1 s
and one that polls every 0.1 s (`makespan.py`'s).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common import (
    SimProcess,
    arguments,
    cpu_seconds,
    exit_on_sigterm,
    machine,
    peak_at_server,
    print_table,
    quantile,
    refill_gaps,
    run_ours,
    write_json,
    write_manifest,
)
from makespan import HIGH_RATE, fixed_poller, makespan_figures

CAPACITY = 40
LATENCY = "lognormal:2,0.5"
SEED = "7"
TARGET_EFFICIENCY = 0.95
TARGET_STATUS_PER_ITEM = 3.0

Run = Callable[[SimProcess], Awaitable[Any]]


def rows_to_run(n: int, capacity: int, folder: Path) -> list[tuple[str, Run]]:
    plans: list[tuple[str, Run]] = []
    for mode in ("poll", "stream"):
        manifest = write_manifest(folder / f"{mode}.csv", n)
        settings = {"concurrency": capacity, "queue_ahead": 0, "rate": HIGH_RATE, "wait": mode}
        plans.append(
            (
                f"ours: {mode}",
                lambda sim, m=manifest, s=settings: run_ours(
                    sim, m, m.with_name(f"out-{m.stem}"), **s
                ),
            )
        )
    plans += [
        ("baseline: poll 1 s", lambda sim: fixed_poller(sim, n, 1.0, capacity)),
        ("baseline: poll 0.1 s", lambda sim: fixed_poller(sim, n, 0.1, capacity)),
    ]
    return plans


def figures(sim: SimProcess, n: int, capacity: int, cpu_s: float) -> dict[str, Any]:
    jobs = sim.jobs()
    out: dict[str, Any] = makespan_figures(sim, n, slots=capacity)
    gaps = refill_gaps(jobs, capacity)
    median, p90 = quantile(gaps, 0.5), quantile(gaps, 0.9)
    out["refill_gaps"] = len(gaps)
    out["refill_gap_median_ms"] = None if median is None else median * 1000
    out["refill_gap_p90_ms"] = None if p90 is None else p90 * 1000
    out["peak_at_server"] = peak_at_server(jobs)
    out["client_cpu_ms_per_item"] = cpu_s * 1000 / n
    return out


def verdict(name: str, f: dict[str, Any]) -> str:
    if name != "ours: poll":
        return "-"
    misses = []
    if f["efficiency"] < TARGET_EFFICIENCY:
        misses.append("efficiency")
    if f["status_per_item"] > TARGET_STATUS_PER_ITEM:
        misses.append("status")
    return "met" if not misses else "missed: " + ", ".join(misses)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=1500)
    parser.add_argument(
        "--capacity",
        type=int,
        default=CAPACITY,
        help="the simulator's capacity = the concurrency (default %(default)s)",
    )
    parser.add_argument(
        "--latency",
        default=LATENCY,
        help="the simulator's service times, e.g. lognormal:MEAN,SIGMA (default %(default)s)",
    )
    args = parser.parse_args()
    exit_on_sigterm()
    n, capacity, latency = args.n, args.capacity, args.latency
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-strict-") as tmp:
        for name, run in rows_to_run(n, capacity, Path(tmp)):
            with SimProcess(capacity=capacity, latency=latency, extra=("--seed", SEED)) as sim:
                cpu = cpu_seconds()
                asyncio.run(run(sim))
                cpu = cpu_seconds() - cpu
                runs[name] = figures(sim, n, capacity, cpu)
    header = [
        "mode",
        "efficiency",
        "makespan s",
        "oracle s",
        "status/item",
        "gap median ms",
        "gap p90 ms",
        "peak at fal",
        "CPU ms/item",
        "target",
    ]
    rows = [
        [
            name,
            f["efficiency"],
            f["makespan_s"],
            f["oracle_s"],
            f["status_per_item"],
            "-" if f["refill_gap_median_ms"] is None else f["refill_gap_median_ms"],
            "-" if f["refill_gap_p90_ms"] is None else f["refill_gap_p90_ms"],
            f["peak_at_server"],
            f["client_cpu_ms_per_item"],
            verdict(name, f),
        ]
        for name, f in runs.items()
    ]
    print_table(
        f"strict concurrency: {n} items, {latency} s service, capacity {capacity},"
        f" concurrency {capacity}, queue_ahead 0 (target for ours, poll:"
        f" efficiency >= {TARGET_EFFICIENCY:g} at <= {TARGET_STATUS_PER_ITEM:g} status/item)",
        header,
        rows,
    )
    write_json(
        args.json,
        {"n": n, "capacity": capacity, "latency": latency, "runs": runs, **machine()},
    )


if __name__ == "__main__":
    main()
