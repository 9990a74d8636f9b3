"""Cold start: 5,000 requests submitted before the first completes.

5,000 items (by default), a fixed 15 s service time, simulator capacity = items (every request
starts at once), concurrency = items, simulator in a separate process. The oracle makespan is
one service time (the recorded service times on `items` slots, as in `makespan.py`); a client
that submits everything at once and notices each end promptly finishes in about that.

- makespan / oracle: from the first accepted submit to the last completion, over the oracle.
- status requests per item = the simulator's status (and status stream) requests / items.
- submit span: from the first accepted submit to the last (the simulator's job records).
- before 1st done: submits the simulator had accepted when the first job completed.
- client CPU ms per item: this process's CPU time during the run (simulator excluded).

Rows: our runner polling and streaming; baselines, in the same run, a plain asyncio loop with
a semaphore of `items` that polls every 1 s and one that polls every 0.1 s (`makespan.py`'s).
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
    print_table,
    run_ours,
    submit_span,
    submitted_before_first_completion,
    write_json,
    write_manifest,
)
from makespan import HIGH_RATE, fixed_poller, makespan_figures

SERVICE_S = 15.0
SEED = "7"
TARGET_STATUS_PER_ITEM = 2.0
TARGET_OVER_ORACLE = 1.1

Run = Callable[[SimProcess], Awaitable[Any]]


def rows_to_run(n: int, folder: Path) -> list[tuple[str, Run]]:
    plans: list[tuple[str, Run]] = []
    for mode in ("poll", "stream"):
        manifest = write_manifest(folder / f"{mode}.csv", n)
        settings = {"concurrency": n, "rate": HIGH_RATE, "wait": mode}
        plans.append(
            (
                f"ours: {mode}",
                lambda sim, m=manifest, s=settings: run_ours(
                    sim, m, m.with_name(f"out-{m.stem}"), **s
                ),
            )
        )
    plans += [
        ("baseline: poll 1 s", lambda sim: fixed_poller(sim, n, 1.0, n)),
        ("baseline: poll 0.1 s", lambda sim: fixed_poller(sim, n, 0.1, n)),
    ]
    return plans


def figures(sim: SimProcess, n: int, cpu_s: float) -> dict[str, Any]:
    jobs = sim.jobs()
    out: dict[str, Any] = makespan_figures(sim, n, slots=n)
    out["over_oracle"] = out["makespan_s"] / out["oracle_s"] if out["oracle_s"] > 0 else 0.0
    out["submit_span_s"] = submit_span(jobs)
    out["submitted_before_first_done"] = submitted_before_first_completion(jobs)
    out["client_cpu_ms_per_item"] = cpu_s * 1000 / n
    return out


def verdict(name: str, f: dict[str, Any]) -> str:
    if not name.startswith("ours"):
        return "-"
    misses = []
    if f["over_oracle"] > TARGET_OVER_ORACLE:
        misses.append("oracle")
    if f["status_per_item"] > TARGET_STATUS_PER_ITEM:
        misses.append("status")
    return "met" if not misses else "missed: " + ", ".join(misses)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=5000)
    parser.add_argument(
        "--service",
        type=float,
        default=SERVICE_S,
        metavar="S",
        help="the fixed service time in seconds (default %(default)s)",
    )
    args = parser.parse_args()
    exit_on_sigterm()
    n, latency = args.n, f"fixed:{args.service:g}"
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cold-start-") as tmp:
        for name, run in rows_to_run(n, Path(tmp)):
            with SimProcess(capacity=n, latency=latency, extra=("--seed", SEED)) as sim:
                cpu = cpu_seconds()
                asyncio.run(run(sim))
                cpu = cpu_seconds() - cpu
                runs[name] = figures(sim, n, cpu)
    header = [
        "mode",
        "makespan/oracle",
        "makespan s",
        "oracle s",
        "status/item",
        "submit span s",
        "before 1st done",
        "CPU ms/item",
        "targets",
    ]
    rows = [
        [
            name,
            f["over_oracle"],
            f["makespan_s"],
            f["oracle_s"],
            f["status_per_item"],
            f["submit_span_s"],
            f["submitted_before_first_done"],
            f["client_cpu_ms_per_item"],
            verdict(name, f),
        ]
        for name, f in runs.items()
    ]
    print_table(
        f"cold start: {n} items, {latency} s service, capacity {n}, concurrency {n}"
        f" (targets for ours: makespan <= {TARGET_OVER_ORACLE:g} x oracle,"
        f" <= {TARGET_STATUS_PER_ITEM:g} status/item)",
        header,
        rows,
    )
    write_json(
        args.json,
        {"n": n, "service_s": args.service, "latency": latency, "runs": runs, **machine()},
    )


if __name__ == "__main__":
    main()
