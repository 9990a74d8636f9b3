"""A run with default settings keeps fal busy: concurrency 20, a fixed 0.3 s service.

fal never refuses a submit for concurrency, so no default submit rate may bind below what the
concurrency needs (`concurrency / service time` = 67 submits/s here). The job sets nothing but
the queue and the concurrency; efficiency = oracle makespan / actual makespan, as in
`makespan.py` (target >= 0.95).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from common import (
    SimProcess,
    arguments,
    exit_on_sigterm,
    machine,
    print_table,
    write_json,
    write_manifest,
)
from makespan import makespan_figures

from batch import JobSpec, run_job
from batch.cli.collector import fewer_collections
from batch.fal import Credentials

CONCURRENCY = 20
LATENCY = "fixed:0.3"


async def run(sim: SimProcess, n: int, folder: Path) -> int:
    manifest = write_manifest(folder / "m.csv", n)
    spec = JobSpec.for_manifest(
        manifest, queue=sim.url, concurrency=CONCURRENCY, output=folder / "out"
    )
    with fewer_collections():  # as the CLI runs it
        summary = await run_job(spec, credentials=Credentials(sim.key))
    return summary.exit_code


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=400)
    args = parser.parse_args()
    exit_on_sigterm()
    with (
        tempfile.TemporaryDirectory(prefix="bench-defaults-") as tmp,
        SimProcess(capacity=CONCURRENCY, latency=LATENCY, extra=("--seed", "3")) as sim,
    ):
        code = asyncio.run(run(sim, args.n, Path(tmp)))
        figures = makespan_figures(sim, args.n, slots=CONCURRENCY)
    figures["exit_code"] = code
    print_table(
        f"default settings: {args.n} items, {LATENCY} s service, concurrency {CONCURRENCY}"
        " (target: efficiency >= 0.95)",
        ["efficiency", "makespan s", "oracle s", "status/item", "exit code"],
        [
            [
                figures["efficiency"],
                figures["makespan_s"],
                figures["oracle_s"],
                figures["status_per_item"],
                code,
            ]
        ],
    )
    write_json(args.json, {"n": args.n, **figures, **machine()})


if __name__ == "__main__":
    main()
