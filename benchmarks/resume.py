"""Resuming a finished job: ``firered-batch run`` again, its wall time and the API calls it makes.

    python benchmarks/resume.py [N] [--json PATH]

Builds a finished N-item job (default 100,000) in a temporary folder, then times the real
command, ``firered-batch run m.csv --queue-url <simulator> --output out`` in a subprocess,
against `firered-batch sim` in its own process, counting every request the simulator sees:

- unchanged: the manifest is the one the job finished — nothing to send (0 API calls);
- one row appended: the manifest gained a row — that row's item is sent, nothing else.

The finished job is built by a shortcut, not by running N requests: `plan_run` plans the
manifest into a fresh ledger (as a first run would), then one SQL transaction marks every item
``completed`` (attempts 1, a request id, timestamps) and gives it one ``outputs`` row; then the
exports and the report are written, as the run that finished the job would have. The output
image files are not written (the report lists them as missing). Everything the resume reads —
the fingerprint of the manifest, the ledger, its counts, the derived files — is what a real
finished run leaves.

Printed: wall time and API calls per phase, the exit code and the run's peak RSS. The script
exits 1 if the unchanged resume makes any API call or a run exits non-zero.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from big_manifest import make_csv
from common import (
    SimProcess,
    arguments,
    exit_on_sigterm,
    machine,
    peak_rss_mib,
    png_data_uri,
    print_table,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
_FINISH = """
    UPDATE items SET state = 'completed', attempts = 1, request_id = 'bench-' || rowid,
        submitted_at = :now, completed_at = :now, updated_at = :now, seed = rowid
"""
_OUTPUTS = """
    INSERT INTO outputs (item_key, idx, path, url, bytes, sha256, width, height, content_type)
    SELECT key, 0, 'images/' || key || '_0.png', 'https://sim.test/' || key || '.png', 100,
        '0000000000000000000000000000000000000000000000000000000000000000', 32, 32, 'image/png'
    FROM items
"""


def finished_job(manifest: Path, output: Path) -> float:
    """Plan the manifest as a first run would, then mark every item completed (see above)."""
    from batch.job import JobSpec
    from batch.ledger import Ledger
    from batch.pipeline.planning import plan_run

    started = time.perf_counter()
    spec = JobSpec.for_manifest(manifest, output=output)
    with Ledger.open(output) as ledger:
        plan_run(spec, ledger)
    conn = sqlite3.connect(output / "ledger.sqlite", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_FINISH, {"now": time.time()})
        conn.execute(_OUTPUTS)
        conn.execute("COMMIT")
    finally:
        conn.close()
    from batch.report.sheet import write_report_quietly

    with Ledger.open(output) as ledger:
        ledger.export(output)
    write_report_quietly(spec)
    return time.perf_counter() - started


def run_command(sim: SimProcess, manifest: Path, output: Path) -> dict[str, Any]:
    """`firered-batch run` in a subprocess: wall time, exit code and the API calls it made."""
    before = sum(int(v) for v in sim.counters()["requests"].values())
    command = [sys.executable, "-m", "batch", "run", str(manifest), "--queue-url", sim.url]
    command += ["--output", str(output)]
    env = {**os.environ, "FAL_KEY": sim.key}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    calls = sum(int(v) for v in sim.counters()["requests"].values()) - before
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
    return {"wall_s": wall, "api_calls": calls, "exit_code": done.returncode}


def append_row(manifest: Path, index: int) -> None:
    """One new row whose input the simulator can read without network (a data URI)."""
    with manifest.open("a", encoding="utf-8") as fh:
        fh.write(f'sku-{index:07d},one more product,"{png_data_uri()}",{index},1,png\n')


def main() -> int:
    parser = arguments(__doc__.splitlines()[0], 100_000)
    args = parser.parse_args()
    exit_on_sigterm()
    n = args.n
    with tempfile.TemporaryDirectory(prefix="resume-") as tmp:
        manifest, output = Path(tmp) / "m.csv", Path(tmp) / "out"
        make_csv(manifest, n)
        setup_s = finished_job(manifest, output)
        with SimProcess(capacity=4, latency="fixed:0") as sim:
            unchanged = run_command(sim, manifest, output)
            append_row(manifest, n)
            appended = run_command(sim, manifest, output)
            run_rss = peak_rss_mib(children=True)  # the runs only: the simulator still runs
    figures: dict[str, Any] = {"n": n, "setup_s": setup_s}
    for name, result in (("unchanged", unchanged), ("appended", appended)):
        for key, value in result.items():
            figures[f"{name}_{key}"] = value
    figures["run_peak_rss_mib"] = run_rss
    figures["machine"] = machine()
    print_table(
        f"resume: a finished {n:,}-item job (built in {setup_s:.1f} s, not counted)",
        ["firered-batch run", "wall s", "API calls", "exit code"],
        [
            ["manifest unchanged", unchanged["wall_s"], unchanged["api_calls"],
             unchanged["exit_code"]],
            ["one row appended", appended["wall_s"], appended["api_calls"],
             appended["exit_code"]],
        ],
    )  # fmt: skip
    print(f"peak RSS of a run: {figures['run_peak_rss_mib']:.0f} MiB")
    write_json(args.json, figures)
    ok = unchanged["api_calls"] == 0 and unchanged["exit_code"] == 0
    ok = ok and appended["exit_code"] == 0
    if not ok:
        print("FAIL: the unchanged resume made API calls, or a run failed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
