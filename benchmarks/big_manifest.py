"""Validate + plan of a big CSV manifest, exactly as ``firered-batch run --dry-run`` does it.

    python benchmarks/big_manifest.py [N] [--json PATH]

Writes an N-row CSV (default 1,000,000) to a temporary folder: ``id``, ``prompt``,
``image_urls`` (one or two https URLs, never local files), ``seed``, ``num_images`` and
``output_format``. Then each phase runs in a fresh child process, so that the CSV's making (and
the other phases) do not count in its peak memory:

- validate: `scan`, what ``firered-batch validate`` does (no ledger);
- plan: `plan_run` into a fresh ledger — every row validated, every item planned;
- dry-run: `run_job(spec, dry_run=True)` on a fresh output folder, what
  ``firered-batch run --dry-run`` does: the plan, then the dry run's report (the counts and
  the cost estimate of the work to send);
- dry-run again: the same command once more, the manifest unchanged;
- first submit: ``firered-batch run`` against the simulator (in its own process) on a fresh
  output folder: the time from starting the command to the simulator's first accepted submit
  (the whole manifest is validated before it), then the run is stopped.

Printed for each phase: wall time, µs per row (wall), CPU seconds of the child (user + system:
less sensitive than wall time to other work on the machine) and its peak RSS. The script exits
1 if a phase does not find exactly N items.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    SimProcess,
    arguments,
    cpu_seconds,
    machine,
    peak_rss_mib,
    print_table,
    write_json,
)

PHASES = ("validate", "plan", "dry-run", "dry-run again", "first submit")
FORMATS = ("png", "jpeg")


def make_csv(path: Path, n: int) -> None:
    """N distinct rows; every third has two input images."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("id,prompt,image_urls,seed,num_images,output_format\n")
        lines = []
        for i in range(n):
            urls = f"https://img.example.com/products/{i}/front.jpg"
            if i % 3 == 0:
                urls += f"|https://img.example.com/products/{i}/back.jpg"
            prompt = f"put product {i} on a white background, soft shadow"
            lines.append(f'sku-{i:07d},"{prompt}",{urls},{i},{1 + i % 2},{FORMATS[i % 2]}\n')
            if len(lines) == 10_000:
                fh.writelines(lines)
                lines.clear()
        fh.writelines(lines)


def measure(phase: str, manifest: Path, output: Path) -> dict[str, Any]:
    """One phase, in this (fresh) process: its wall time, item counts and peak RSS."""
    from batch import JobSpec, run_job
    from batch.ledger import Ledger
    from batch.manifest import scan
    from batch.manifest.localfiles import LocalFiles
    from batch.pipeline.planning import plan_run

    spec = JobSpec.for_manifest(manifest, output=output)
    cpu = cpu_seconds()
    started = time.perf_counter()
    if phase == "plan":
        with Ledger.open(output.with_name(output.name + "-plan")) as ledger:
            planned = plan_run(spec, ledger)
        items = planned.counts["new"]
    elif phase == "validate":
        result = scan(
            spec.manifest,
            endpoint=spec.endpoint,
            defaults=spec.defaults,
            files=LocalFiles(spec.image_limits),
        )
        items = result.items
    else:
        summary = asyncio.run(run_job(spec, dry_run=True))
        items = summary.plan["new"] if phase == "dry-run" else sum(summary.counts.values())
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "items": items, "peak_rss_mib": peak_rss_mib()}


def first_submit(manifest: Path, output: Path) -> dict[str, Any]:
    """Start `firered-batch run` on a fresh folder; seconds until the simulator accepts the first
    submit. The run is then stopped (SIGKILL: only the time to the first submit is measured)."""
    with SimProcess(capacity=8, latency="fixed:600") as sim:
        command = [sys.executable, "-m", "batch", "run", str(manifest), "--queue-url", sim.url]
        command += ["--output", str(output), "--log-format", "json", "--concurrency", "8"]
        env = {**os.environ, "FAL_KEY": sim.key}
        started = time.perf_counter()
        child = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while sim.requests("submit") == 0:
                if child.poll() is not None:
                    raise RuntimeError(f"the run exited {child.returncode} before a submit")
                time.sleep(0.02)
            wall = time.perf_counter() - started
        finally:
            child.kill()
            child.wait()
    return {"wall_s": wall, "cpu_s": None, "items": None, "peak_rss_mib": None}


def run_phase(phase: str, manifest: Path, output: Path) -> dict[str, Any]:
    if phase == "first submit":
        return first_submit(manifest, output.with_name("out-run"))
    command = [sys.executable, __file__, "0", "--phase", phase]
    command += ["--manifest", str(manifest), "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"phase {phase!r} exited {done.returncode}:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return figures


def main() -> int:
    parser = arguments(__doc__.splitlines()[0], 1_000_000)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # a child's job
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase is not None:
        print(json.dumps(measure(args.phase, args.manifest, args.output)))
        return 0
    n = args.n
    with tempfile.TemporaryDirectory(prefix="big-manifest-") as tmp:
        manifest = Path(tmp) / "big.csv"
        started = time.perf_counter()
        make_csv(manifest, n)
        made_s = time.perf_counter() - started
        size_mb = manifest.stat().st_size / 1e6
        results = {phase: run_phase(phase, manifest, Path(tmp) / "out") for phase in PHASES}
    figures: dict[str, Any] = {"n": n, "csv_mb": size_mb, "make_csv_s": made_s}
    rows = []
    ok = True
    for phase, result in results.items():
        n_items = result["items"]
        name = phase.replace(" ", "_").replace("-", "_")
        per_row = result["wall_s"] / max(1, n) * 1e6
        figures[f"{name}_s"] = result["wall_s"]
        figures[f"{name}_us_per_row"] = per_row
        figures[f"{name}_cpu_s"] = result["cpu_s"]
        figures[f"{name}_peak_rss_mib"] = result["peak_rss_mib"]
        figures[f"{name}_items"] = result["items"]
        rows.append(
            [phase, result["wall_s"], per_row, result["cpu_s"], result["peak_rss_mib"], n_items]
        )
        ok = ok and result["items"] in (n, None)
    figures["machine"] = machine()
    print_table(
        f"big manifest: {n:,} CSV rows, {size_mb:.0f} MB (made in {made_s:.1f} s, not counted)",
        ["phase", "wall s", "µs/row", "CPU s", "peak RSS MiB", "items"],
        rows,
    )
    write_json(args.json, figures)
    if not ok:
        print(f"FAIL: a phase did not find {n} items", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
