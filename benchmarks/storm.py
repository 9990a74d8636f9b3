"""429 storm: the simulator admits 10 submits/s and answers 429 + Retry-After beyond that.

1,000 items (by default), zero service time, a run configured for 5x the rate the server takes
(50 submits/s). The ideal is the server's own pace: items / 10 s. Printed: wall time, the ratio
ideal / actual (target >= 0.9) and 429s received as a share of submits (target <= 5%).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
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

from batch import JobSpec, run_job
from batch.cli.collector import fewer_collections
from batch.fal import Credentials

SERVER_RATE = 10.0
CONFIGURED_RATE = 50.0
CONCURRENCY = 100


async def storm(sim: SimProcess, folder: Path, n: int) -> dict[str, float]:
    manifest = write_manifest(folder / "storm.csv", n)
    spec = JobSpec.for_manifest(
        manifest,
        queue=sim.url,
        concurrency=CONCURRENCY,
        rate=CONFIGURED_RATE,
        output=folder / "out",
    )
    started = time.perf_counter()
    with fewer_collections():  # as the CLI runs it
        summary = await run_job(spec, credentials=Credentials(sim.key))
    wall = time.perf_counter() - started
    if summary.exit_code != 0:
        raise RuntimeError(summary.text())
    responses = sim.counters()["responses"].get("submit", {})
    rejected = int(responses.get("429", 0))
    submits = sum(int(v) for v in responses.values())
    first = min(job["submitted_at"] for job in sim.jobs())
    last = max(job["submitted_at"] for job in sim.jobs())
    ideal = (n - 1) / SERVER_RATE
    return {
        "wall_s": wall,
        "submit_span_s": last - first,
        "ideal_s": ideal,
        "ideal_ratio": ideal / (last - first) if last > first else 0.0,
        "submits": submits,
        "rejected_429": rejected,
        "rejected_share": rejected / submits if submits else 0.0,
    }


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=1000)
    args = parser.parse_args()
    exit_on_sigterm()
    extra = ("--max-submits-per-second", str(SERVER_RATE))
    with (
        tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp,
        SimProcess(capacity=CONCURRENCY, latency="fixed:0", extra=extra) as sim,
    ):
        figures = asyncio.run(storm(sim, Path(tmp), args.n))
    print_table(
        f"429 storm: {args.n} items, server admits {SERVER_RATE:g}/s, run configured for "
        f"{CONFIGURED_RATE:g}/s (targets: >= 0.9 of ideal, 429s <= 5% of submits)",
        ["submit span s", "ideal s", "of ideal", "submits", "429s", "429 share", "wall s"],
        [
            [
                figures["submit_span_s"],
                figures["ideal_s"],
                figures["ideal_ratio"],
                int(figures["submits"]),
                int(figures["rejected_429"]),
                figures["rejected_share"],
                figures["wall_s"],
            ]
        ],
    )
    write_json(args.json, {"n": args.n, **figures, **machine()})


if __name__ == "__main__":
    main()
