"""The simulator's sustained request rate on this machine: submits/s and status polls/s.

    python benchmarks/sim_rate.py [N] [--workers 64] [--json PATH]

A raw aiohttp client with many concurrent connections sends N submits, then N status polls
(round-robin over the submitted requests), to `firered-batch sim` in a separate process with a
large capacity and zero service time. Submits include the simulator's work for the job (every job
starts at once and renders one 32x32 output), so they are the rate a client can sustain, not
the bare HTTP rate.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from common import (
    ENDPOINT,
    SimProcess,
    arguments,
    exit_on_sigterm,
    machine,
    payload,
    peak_rss_mib,
    png_data_uri,
    print_table,
    write_json,
)

CAPACITY = 100_000


async def hammer(
    n: int, workers: int, call: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """Run `call(i)` for i in range(n) on `workers` tasks; wall seconds and each call's latency."""
    counter = itertools.count()
    latencies: list[float] = []

    async def worker() -> None:
        while (i := next(counter)) < n:
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - started, latencies


def figures(kind: str, n: int, wall: float, latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        f"{kind}_n": n,
        f"{kind}_wall_s": wall,
        f"{kind}_per_s": n / wall,
        f"{kind}_p50_ms": statistics.median(ordered) * 1000,
        f"{kind}_p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


async def measure(sim: SimProcess, n: int, workers: int) -> dict[str, Any]:
    image = png_data_uri()
    headers = {"Authorization": f"Key {sim.key}"}
    status_urls: list[str] = []
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def submit(i: int) -> None:
            async with session.post(f"{sim.url}/{ENDPOINT}", json=payload(i, image)) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"submit answered {resp.status}: {body}")
                status_urls.append(body["status_url"])

        async def status(i: int) -> None:
            url = status_urls[i % len(status_urls)]
            async with session.get(url, params={"logs": "0"}) as resp:
                await resp.read()
                if resp.status not in (200, 202):
                    raise RuntimeError(f"status answered {resp.status}")

        submit_wall, submit_lat = await hammer(n, workers, submit)
        status_wall, status_lat = await hammer(n, workers, status)
    return {
        **figures("submit", n, submit_wall, submit_lat),
        **figures("status", n, status_wall, status_lat),
    }


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=5000)
    parser.add_argument("--workers", type=int, default=64, help="concurrent connections")
    args = parser.parse_args()
    exit_on_sigterm()
    with SimProcess(capacity=CAPACITY, latency="fixed:0") as sim:
        result = asyncio.run(measure(sim, args.n, args.workers))
        seen = sim.counters()["requests"]
    result.update(
        workers=args.workers,
        sim_submits_seen=int(seen.get("submit", 0)),
        sim_status_seen=int(seen.get("status", 0)),
        client_peak_rss_mib=peak_rss_mib(),
        sim_peak_rss_mib=peak_rss_mib(children=True),
        machine=machine(),
    )
    rows = [
        [
            kind,
            result[f"{kind}_n"],
            result[f"{kind}_wall_s"],
            result[f"{kind}_per_s"],
            result[f"{kind}_p50_ms"],
            result[f"{kind}_p99_ms"],
        ]
        for kind in ("submit", "status")
    ]
    print_table(
        f"simulator request rate ({args.workers} connections, separate process, "
        f"{result['machine']['cpus']} CPUs)",
        ["request", "n", "wall s", "req/s", "p50 ms", "p99 ms"],
        rows,
    )
    print(
        f"peak RSS: client {result['client_peak_rss_mib']:.0f} MiB, "
        f"simulator {result['sim_peak_rss_mib']:.0f} MiB"
    )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
