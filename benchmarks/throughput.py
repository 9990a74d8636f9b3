"""Pipeline throughput against the raw-protocol floor, at zero service time.

    python benchmarks/throughput.py [N] [--concurrency 200] [--profile PATH] [--json PATH]

Both phases run N items against their own `firered-batch sim` (separate process, capacity =
concurrency, latency fixed:0), so neither pays for the other's leftovers:

- floor: a bare asyncio loop under a semaphore doing the pipeline's HTTP calls per item —
  submit, status until COMPLETED (at once, then 5 ms doubling to 50 ms), result, and a GET of
  each output image — with no ledger and no files;
- pipeline: `run_job` on a CSV manifest of the same N requests, writing the ledger and images
  to a temporary folder.

Printed: wall time, items/s, status requests per item (the simulator's counts), client CPU per
item and the kernel's share of it, for each; the ratio pipeline/floor, and the run's exit code.
The kernel share is mostly the pipeline's file creation. Where the file system has no journal
(this VM's ext4), creating a file costs up to ~0.7 ms of kernel CPU for a minute or so after
many files were deleted nearby (the inode allocator skips recently deleted inodes; measured
0.03 ms/file otherwise), so a run started right after another one, whose temporary folder was
just deleted, is slower: let a minute pass between runs. `--profile PATH` runs the pipeline
phase under cProfile, writes the stats to PATH and prints the top functions.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    ENDPOINT,
    SimProcess,
    arguments,
    cpu_seconds,
    exit_on_sigterm,
    kernel_seconds,
    machine,
    payload,
    peak_rss_mib,
    png_data_uri,
    print_table,
    write_json,
    write_manifest,
)

from batch import JobSpec, run_job
from batch.cli.collector import fewer_collections
from batch.fal import Credentials

FIRST_BACKOFF_S = 0.005
MAX_BACKOFF_S = 0.05
HIGH_RATE = 100_000.0


async def floor_items(sim: SimProcess, n: int, concurrency: int) -> None:
    """The raw protocol, item after item under a semaphore: no ledger, no files."""
    image = png_data_uri()
    headers = {"Authorization": f"Key {sim.key}"}
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def get_json(url: str, **params: str) -> tuple[int, Any]:
            async with session.get(url, params=params) as resp:
                return resp.status, await resp.json()

        async def one(i: int) -> None:
            async with gate:
                async with session.post(f"{sim.url}/{ENDPOINT}", json=payload(i, image)) as resp:
                    submitted = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"submit answered {resp.status}: {submitted}")
                backoff = 0.0
                while True:
                    code, body = await get_json(submitted["status_url"], logs="0")
                    if code == 200 and body["status"] == "COMPLETED":
                        break
                    await asyncio.sleep(backoff)
                    backoff = min(MAX_BACKOFF_S, max(FIRST_BACKOFF_S, backoff * 2))
                code, result = await get_json(submitted["response_url"])
                if code != 200:
                    raise RuntimeError(f"result answered {code}: {result}")
                for out in result["images"]:
                    async with session.get(out["url"]) as resp:
                        await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"image download answered {resp.status}")

        await asyncio.gather(*(one(i) for i in range(n)))


async def pipeline_items(
    sim: SimProcess, folder: Path, n: int, concurrency: int, profile: Path | None
) -> int:
    manifest = folder / "bench.csv"
    write_manifest(manifest, n)
    spec = JobSpec.for_manifest(
        manifest, queue=sim.url, concurrency=concurrency, rate=HIGH_RATE, output=folder / "out"
    )
    profiler = cProfile.Profile() if profile is not None else None
    if profiler is not None:
        profiler.enable()
    try:
        with fewer_collections():  # as the CLI runs it
            summary = await run_job(spec, credentials=Credentials(sim.key))
    finally:
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(str(profile))
    if summary.exit_code != 0:
        print(summary.text())
    return summary.exit_code


def phase(name: str, n: int, concurrency: int, run: Any, *args: Any) -> tuple[dict[str, Any], Any]:
    """Run one phase against a fresh simulator; its figures and what `run` returned."""
    with SimProcess(capacity=concurrency, latency="fixed:0") as sim:
        client_cpu, sim_cpu = cpu_seconds(), cpu_seconds(children=True)
        kernel_cpu = kernel_seconds()
        started = time.perf_counter()
        returned = asyncio.run(run(sim, *args))
        wall = time.perf_counter() - started
        client_cpu = cpu_seconds() - client_cpu
        kernel_cpu = kernel_seconds() - kernel_cpu
        seen = sim.counters()["requests"]
    sim_cpu = cpu_seconds(children=True) - sim_cpu  # the simulator's whole life, start included
    figures = {
        f"{name}_wall_s": wall,
        f"{name}_items_per_s": n / wall,
        f"{name}_status_per_item": int(seen.get("status", 0)) / n,
        f"{name}_requests_per_item": sum(int(v) for v in seen.values()) / n,
        f"{name}_client_cpu_ms_per_item": client_cpu * 1000 / n,
        f"{name}_client_kernel_ms_per_item": kernel_cpu * 1000 / n,
        f"{name}_sim_cpu_ms_per_item": sim_cpu * 1000 / n,
    }
    return figures, returned


def print_profile(path: Path, top: int = 25) -> None:
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=5000)
    parser.add_argument("--concurrency", type=int, default=200, help="and simulator capacity")
    parser.add_argument("--profile", type=Path, metavar="PATH", help="cProfile the pipeline")
    args = parser.parse_args()
    exit_on_sigterm()
    n, conc = args.n, args.concurrency

    floor, _ = phase("floor", n, conc, floor_items, n, conc)
    with tempfile.TemporaryDirectory(prefix="firered-bench-") as tmp:
        pipe, exit_code = phase(
            "pipeline", n, conc, pipeline_items, Path(tmp), n, conc, args.profile
        )
    result: dict[str, Any] = {
        "n": n,
        "concurrency": conc,
        **floor,
        **pipe,
        "ratio": pipe["pipeline_items_per_s"] / floor["floor_items_per_s"],
        "exit_code": exit_code,
        "client_peak_rss_mib": peak_rss_mib(),
        "sim_peak_rss_mib": peak_rss_mib(children=True),
        "machine": machine(),
    }
    rows = [
        [
            label,
            result[f"{key}_wall_s"],
            result[f"{key}_items_per_s"],
            result[f"{key}_status_per_item"],
            result[f"{key}_requests_per_item"],
            result[f"{key}_client_cpu_ms_per_item"],
            result[f"{key}_client_kernel_ms_per_item"],
            result[f"{key}_sim_cpu_ms_per_item"],
        ]
        for label, key in (("raw-protocol floor", "floor"), ("pipeline (run_job)", "pipeline"))
    ]
    print_table(
        f"throughput: {n} items, concurrency {conc}, simulator capacity {conc}, latency 0 "
        f"({result['machine']['cpus']} CPUs)",
        [
            "",
            "wall s",
            "items/s",
            "status/item",
            "requests/item",
            "client CPU ms/item",
            "of it kernel",
            "sim CPU ms/item",
        ],
        rows,
    )
    print(f"ratio pipeline/floor: {result['ratio']:.2f} (target >= 0.85)")
    print(f"pipeline exit code: {exit_code}")
    print(
        f"peak RSS: client {result['client_peak_rss_mib']:.0f} MiB, "
        f"simulator {result['sim_peak_rss_mib']:.0f} MiB"
    )
    write_json(args.json, result)
    if args.profile is not None:
        print_profile(args.profile)
    raise SystemExit(0 if exit_code == 0 else 1)


if __name__ == "__main__":
    main()
