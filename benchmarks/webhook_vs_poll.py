"""Webhooks against polling (and the status stream): status requests per item and makespan.

    python benchmarks/webhook_vs_poll.py [N] [--concurrency 50] [--latency uniform:0.5,1.5]
                                         [--lost 0.2] [--modes poll,stream,webhook] [--json PATH]

Each mode runs `run_job` on the same CSV manifest of N requests against its own
`firered-batch sim` (a separate process; capacity = concurrency; the same seeded service-time
distribution), writing the ledger and images to a temporary folder. In webhook mode the run's
receiver listens on a free local port, the simulator signs and posts each result there, and
the JWKS is the simulator's; with `--lost P` a further webhook run loses that share of the
deliveries, which the safety-net poll then collects.

Printed per mode: makespan (wall time of the run), items/s, status requests per item and all
requests per item (the simulator's counts; a status stream counts as one), webhooks delivered,
the run's exit code.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    SimProcess,
    arguments,
    exit_on_sigterm,
    free_port,
    machine,
    print_table,
    write_json,
    write_manifest,
)

from batch import JobSpec, run_job
from batch.cli.collector import fewer_collections
from batch.fal import Credentials

HIGH_RATE = 100_000.0
SEED = 7


def sim_options(lost: float, folder: Path) -> tuple[str, ...]:
    options: tuple[str, ...] = ("--seed", str(SEED))
    if lost > 0:
        plan = folder / "faults.yaml"
        plan.write_text(f"seed: {SEED}\nrules:\n  - {{kind: webhook_lost, rate: {lost}}}\n")
        options += ("--faults", str(plan))
    return options


async def one_run(
    sim: SimProcess, folder: Path, output: Path, wait: str, concurrency: int
) -> dict[str, Any]:
    manifest = folder / "bench.csv"
    settings: dict[str, Any] = {
        "queue": sim.url,
        "concurrency": concurrency,
        "rate": HIGH_RATE,
        "output": output,
        "wait": wait,
    }
    if wait == "webhook":
        port = free_port()
        settings["webhook"] = {
            "public_url": f"http://127.0.0.1:{port}/fal",
            "listen": f"127.0.0.1:{port}",
            "jwks_url": f"{sim.url}/.well-known/jwks.json",
            "safety_net": 1.0,
        }
    spec = JobSpec.for_manifest(manifest, **settings)
    started = time.perf_counter()
    with fewer_collections():  # as the CLI runs it
        summary = await run_job(spec, credentials=Credentials(sim.key))
    wall = time.perf_counter() - started
    if summary.exit_code != 0:
        print(summary.text())
    return {
        "wall_s": wall,
        "exit_code": summary.exit_code,
        "completed": summary.counts.get("completed", 0),
        "safety_net_polls": int(summary.stats.get("webhooks", {}).get("safety_net", 0)),
    }


def phase(name: str, wait: str, args: Any, folder: Path, lost: float = 0.0) -> dict[str, Any]:
    n, conc = args.n, args.concurrency
    extra = sim_options(lost, folder)
    with SimProcess(capacity=conc, latency=args.latency, extra=extra) as sim:
        output = folder / f"out-{name.replace(' ', '').replace(',', '-').replace('%', '')}"
        figures = asyncio.run(one_run(sim, folder, output, wait, conc))
        counters = sim.counters()
    seen = counters["requests"]
    status = int(seen.get("status", 0)) + int(seen.get("stream", 0))
    return {
        "mode": name,
        "makespan_s": figures["wall_s"],
        "items_per_s": n / figures["wall_s"],
        "status_per_item": status / n,
        "requests_per_item": sum(int(v) for v in seen.values()) / n,
        "webhooks_delivered": int(counters.get("webhooks", {}).get("delivered", 0)),
        "webhooks_lost": len(counters.get("webhooks_lost", [])),
        "safety_net_polls": figures["safety_net_polls"],
        "completed": figures["completed"],
        "exit_code": figures["exit_code"],
    }


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=500)
    parser.add_argument("--concurrency", type=int, default=50, help="and simulator capacity")
    parser.add_argument("--latency", default="uniform:0.5,1.5", help="service times")
    parser.add_argument("--lost", type=float, default=0.2, help="share of webhooks lost (0: off)")
    parser.add_argument("--modes", default="poll,stream,webhook", help="which, in order")
    args = parser.parse_args()
    exit_on_sigterm()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="firered-bench-") as tmp:
        folder = Path(tmp)
        write_manifest(folder / "bench.csv", args.n)
        for mode in modes:
            results.append(phase(mode, mode, args, folder))
        if "webhook" in modes and args.lost > 0:
            label = f"webhook, {args.lost:.0%} lost"
            results.append(phase(label, "webhook", args, folder, lost=args.lost))
    print_table(
        f"webhook vs poll: {args.n} items, concurrency {args.concurrency}, simulator capacity "
        f"{args.concurrency}, latency {args.latency} ({machine()['cpus']} CPUs)",
        ["mode", "makespan s", "items/s", "status/item", "requests/item", "webhooks", "exit"],
        [
            [
                r["mode"],
                r["makespan_s"],
                r["items_per_s"],
                r["status_per_item"],
                r["requests_per_item"],
                r["webhooks_delivered"],
                r["exit_code"],
            ]
            for r in results
        ],
    )
    by_mode = {r["mode"]: r for r in results}
    figures: dict[str, Any] = {
        "n": args.n,
        "concurrency": args.concurrency,
        "latency": args.latency,
        "lost": args.lost,
        "machine": machine(),
        "modes": results,
    }
    for r in results:
        key = r["mode"].split(",")[0] if "lost" not in r["mode"] else "webhook_lost"
        figures[f"{key}_makespan_s"] = r["makespan_s"]
        figures[f"{key}_status_per_item"] = r["status_per_item"]
    if "poll" in by_mode and "webhook" in by_mode:
        poll, hook = by_mode["poll"], by_mode["webhook"]
        print(
            f"webhook/poll: makespan x{hook['makespan_s'] / poll['makespan_s']:.2f}, "
            f"status requests per item {hook['status_per_item']:.2f} vs "
            f"{poll['status_per_item']:.2f}"
        )
    write_json(args.json, figures)
    raise SystemExit(0 if all(r["exit_code"] == 0 for r in results) else 1)


if __name__ == "__main__":
    main()
