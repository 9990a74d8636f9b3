"""Makespan and status requests per item: our wait modes beside two common polling loops.

2,000 items (by default) with lognormal service times (mean 0.5 s), simulator capacity 50,
concurrency 50, simulator in a separate process. For each mode the simulator is fresh and
seeded alike, so the k-th submitted job gets the same service time in every mode.

- efficiency = oracle makespan / actual makespan. The oracle takes the service times the
  simulator recorded, in submission order, and dispatches them onto `capacity` slots with zero
  overhead; the actual makespan runs from the first submit to the last completion.
- status requests per item = the simulator's status (and status stream) requests / items.

Baselines, in the same run: a plain asyncio loop with a semaphore of `concurrency` that polls
every 0.1 s (as fal's official Python client does) and one that polls every 1 s.
"""

from __future__ import annotations

import asyncio
import heapq
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    ENDPOINT,
    SimProcess,
    arguments,
    exit_on_sigterm,
    free_port,
    machine,
    payload,
    png_data_uri,
    print_table,
    write_json,
    write_manifest,
)

from batch import JobSpec, run_job
from batch.cli.collector import fewer_collections
from batch.fal import Credentials

CAPACITY = 50
LATENCY = "lognormal:0.5,0.5"
SEED = "7"
HIGH_RATE = 10_000.0


def oracle_makespan(service_times: list[float], slots: int) -> float:
    """The service times in submission order on `slots` slots, with zero overhead."""
    free = [0.0] * slots
    end = 0.0
    for service in service_times:
        start = heapq.heappop(free)
        finish = start + service
        end = max(end, finish)
        heapq.heappush(free, finish)
    return end


def makespan_figures(sim: SimProcess, n: int, slots: int = CAPACITY) -> dict[str, float]:
    jobs = sorted(sim.jobs(), key=lambda job: job["submitted_at"])
    done = [job for job in jobs if job.get("completed_at") and not job.get("error_type")]
    oracle = oracle_makespan([float(job["service_time"]) for job in done], slots)
    actual = max(job["completed_at"] for job in done) - jobs[0]["submitted_at"]
    seen = sim.counters()["requests"]
    status = int(seen.get("status", 0)) + int(seen.get("stream", 0))
    return {
        "oracle_s": oracle,
        "makespan_s": actual,
        "efficiency": oracle / actual if actual > 0 else 0.0,
        "status_per_item": status / n,
        "requests_per_item": sum(int(v) for v in seen.values()) / n,
        "completed": len(done),
    }


async def fixed_poller(sim: SimProcess, n: int, interval: float, concurrency: int) -> None:
    """The common approach: semaphore, submit, poll every `interval`, result, download."""
    image = png_data_uri()
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Key {sim.key}"}
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(i: int) -> None:
            async with gate:
                async with session.post(f"{sim.url}/{ENDPOINT}", json=payload(i, image)) as resp:
                    handle = await resp.json()
                while True:
                    async with session.get(handle["status_url"]) as resp:
                        if (await resp.json())["status"] == "COMPLETED":
                            break
                    await asyncio.sleep(interval)
                async with session.get(handle["response_url"]) as resp:
                    result = await resp.json()
                for image_out in result["images"]:
                    async with session.get(image_out["url"]) as resp:
                        await resp.read()

        await asyncio.gather(*(one(i) for i in range(n)))


async def ours(sim: SimProcess, n: int, mode: str, concurrency: int, folder: Path) -> None:
    manifest = write_manifest(folder / f"{mode}.csv", n)
    settings: dict[str, Any] = {
        "queue": sim.url,
        "concurrency": concurrency,
        "rate": HIGH_RATE,
        "wait": mode,
        "output": folder / f"out-{mode}",
    }
    if mode == "webhook":  # the simulator (another process) posts to our receiver
        port = free_port()
        settings["webhook"] = {
            "public_url": f"http://127.0.0.1:{port}/fal",
            "listen": f"127.0.0.1:{port}",
            "jwks_url": f"{sim.url}/.well-known/jwks.json",
        }
    spec = JobSpec.for_manifest(manifest, **settings)
    with fewer_collections():  # as the CLI runs it
        summary = await run_job(spec, credentials=Credentials(sim.key))
    if summary.exit_code != 0:
        raise RuntimeError(summary.text())


def modes() -> list[str]:
    return ["poll", "stream", "webhook"]


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=2000)
    parser.add_argument("--concurrency", type=int, default=CAPACITY)
    args = parser.parse_args()
    exit_on_sigterm()
    n, concurrency = args.n, args.concurrency
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-makespan-") as tmp:
        plans: list[tuple[str, Any]] = [
            (f"ours: {mode}", lambda sim, m=mode: ours(sim, n, m, concurrency, Path(tmp)))
            for mode in modes()
        ]
        plans += [
            ("baseline: poll 0.1 s", lambda sim: fixed_poller(sim, n, 0.1, concurrency)),
            ("baseline: poll 1 s", lambda sim: fixed_poller(sim, n, 1.0, concurrency)),
        ]
        for name, run in plans:
            extra = ("--seed", SEED)
            with SimProcess(capacity=CAPACITY, latency=LATENCY, extra=extra) as sim:
                asyncio.run(run(sim))
                runs[name] = makespan_figures(sim, n)
    header = ["mode", "efficiency", "makespan s", "oracle s", "status/item", "requests/item"]
    rows = [
        [
            name,
            f["efficiency"],
            f["makespan_s"],
            f["oracle_s"],
            f["status_per_item"],
            f["requests_per_item"],
        ]
        for name, f in runs.items()
    ]
    print_table(
        f"makespan: {n} items, {LATENCY} s service, capacity {CAPACITY}, concurrency {concurrency}"
        " (targets: efficiency >= 0.95; poll <= 3 status/item; stream, webhook <= 1)",
        header,
        rows,
    )
    write_json(args.json, {"n": n, "concurrency": concurrency, "runs": runs, **machine()})


if __name__ == "__main__":
    main()
