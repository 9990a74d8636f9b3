"""Lost submit answers: fal accepts a submit, and its answer never arrives (fal-protocol.md §11
row 13), against the simulator in its own process.

N items (default 1000), concurrency 20, service 0.2 to 0.6 s; the simulator drops the answer of
5% of the submits after accepting them (`drop_after`), and its request history shows a request
only once it has ended (the worst case fal's docs allow). The run uses its defaults: each lost
answer is looked for in fal's request history and re-attached, never paid again. Figures:
accepted submits per item (target 1.0), answers dropped, requests recovered from the history,
items sent again (flagged possible_duplicate), payloads paid twice (target 0), history calls
per recovered item, and the makespan.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import (
    SimProcess,
    arguments,
    exit_on_sigterm,
    history_calls,
    machine,
    print_table,
    write_json,
    write_manifest,
)

from batch import JobSpec, run_job
from batch.cli.collector import fewer_collections
from batch.fal import Credentials

CONCURRENCY = 20
DROP_RATE = 0.05


def measure(n: int, folder: Path, drop_rate: float = DROP_RATE) -> dict[str, Any]:
    plan = folder / "faults.yaml"
    rule = {"kind": "drop_after", "route": "submit", "rate": drop_rate}
    plan.write_text(yaml.safe_dump({"seed": 5, "rules": [rule]}), encoding="utf-8")
    extra = ("--seed", "5", "--faults", str(plan))
    with SimProcess(capacity=CONCURRENCY, latency="uniform:0.2,0.6", extra=extra) as sim:
        manifest = write_manifest(folder / "m.csv", n)
        spec = JobSpec.for_manifest(
            manifest, queue=sim.url, concurrency=CONCURRENCY, output=folder / "out"
        )
        started = time.perf_counter()
        with fewer_collections():  # as the CLI runs it
            summary = asyncio.run(run_job(spec, credentials=Credentials(sim.key)))
        makespan = time.perf_counter() - started
        counters = sim.counters()
    calls = history_calls(counters)
    return {
        "items": n,
        "exit_code": int(summary.exit_code),
        "completed": summary.counts["completed"],
        "answers_dropped": counters["faults"].get("drop_after", 0),
        "accepted_submits_per_item": round(counters["accepted_submits"] / n, 4),
        "recovered": summary.recovered,
        "sent_again": summary.possible_duplicates,
        "paid_twice": counters["paid_twice"],
        "history_calls": calls,
        "history_calls_per_recovered": round(calls / max(1, summary.recovered), 2),
        "makespan_s": round(makespan, 2),
    }


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=1000)
    parser.add_argument("--drop-rate", type=float, default=DROP_RATE)
    args = parser.parse_args()
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-lost-") as tmp:
        figures = measure(args.n, Path(tmp), args.drop_rate)
    columns = [
        ("completed", "completed"),
        ("answers dropped", "answers_dropped"),
        ("submits/item", "accepted_submits_per_item"),
        ("recovered", "recovered"),
        ("sent again", "sent_again"),
        ("paid twice", "paid_twice"),
        ("history calls/recovered", "history_calls_per_recovered"),
        ("makespan s", "makespan_s"),
    ]
    print_table(
        f"lost submit answers: {args.n} items, {args.drop_rate:.0%} of answers dropped after"
        " accept",
        [name for name, _ in columns],
        [[figures[key] for _, key in columns]],
    )
    write_json(args.json, {**figures, **machine()})


if __name__ == "__main__":
    main()
