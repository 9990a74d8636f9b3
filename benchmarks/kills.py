"""Crash safety: `firered-batch run` killed with SIGKILL at random moments, then resumed.

N items (default 300) against the simulator in its own process (capacity 20, service 0.2 to
0.6 s); K kills (default 20), every other one right after a submit left and before its answer
was recorded (the `submit` crashpoint, at a random submit), the others at a random moment 0.3
to 2 s into a run (seeded), then one run to the end. Figures: items completed, output files
verified against the ledger (size and sha256), payloads fal billed more than once (paid
twice), accepted submits per item, lost submits (a kill between a submit's intent being
recorded and its answer being recorded) found in fal's request history and re-attached, those
sent again and flagged `possible_duplicate` (the kill came before the submit left), the
history calls that cost per recovered item, and the final run's exit code. `--history-wait`
(default 40 s) bounds how long a lost submit is looked for: the simulator's requests end
within a second; the default bound of a real run (no start_timeout) is minutes.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

from batch.ledger import Ledger
from batch.outputs import verify_outputs

KILLS = 20


def command(manifest: Path, out: Path, sim: SimProcess, history_wait: str) -> list[str]:
    return [
        sys.executable, "-m", "batch", "run", str(manifest), "--queue-url", sim.url,
        "--concurrency", "20", "--output", str(out), "--history-wait", history_wait,
    ]  # fmt: skip


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=300)
    parser.add_argument("--kills", type=int, default=KILLS)
    parser.add_argument("--history-wait", default="40s")
    args = parser.parse_args()
    exit_on_sigterm()
    rng = random.Random(11)
    with (
        tempfile.TemporaryDirectory(prefix="bench-kills-") as tmp,
        SimProcess(capacity=20, latency="uniform:0.2,0.6", extra=("--seed", "11")) as sim,
    ):
        manifest = write_manifest(Path(tmp) / "m.csv", args.n)
        out = Path(tmp) / "out"
        env = {**os.environ, "FAL_KEY": sim.key}
        run = command(manifest, out, sim, args.history_wait)
        killed = at_submit = tries = 0
        while killed < args.kills and tries < 3 * args.kills:  # a run may finish first
            i, tries = tries, tries + 1
            # Every other kill lands right after a submit left and before its answer is
            # recorded (the `submit` crashpoint, at a random submit of the run); the others at
            # a random moment, whatever the run is doing.
            crash = i % 2 == 0
            kill_env = {**env, "FIRERED_BATCH_CRASH": f"submit:{rng.randint(1, 20)}"}
            proc = subprocess.Popen(
                run,
                env=kill_env if crash else env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if crash:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                time.sleep(rng.uniform(0.3, 2.0))  # a benchmark: real time is the point
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
            if proc.wait() == -signal.SIGKILL:
                killed += 1
                at_submit += crash
        final = subprocess.run(run, env=env, capture_output=True, text=True)
        counters = sim.counters()
        with Ledger.open(out) as ledger:
            counts = ledger.counts()
            records = [r for key in _keys(ledger) for r in ledger.outputs(key)]
            problems = verify_outputs(out, records)
            recovered, flagged = ledger.recovery_counts()
    figures: dict[str, Any] = {
        "items": args.n,
        "kills": killed,
        "kills_after_a_submit": at_submit,
        "completed": counts["completed"],
        "files_verified": len(records) - len(problems),
        "file_problems": len(problems),
        "paid_twice": counters["paid_twice"],
        "possible_duplicates": flagged,
        "recovered": recovered,
        "accepted_submits_per_item": round(counters["accepted_submits"] / args.n, 4),
        "history_calls": history_calls(counters),
        "history_calls_per_recovered": round(history_calls(counters) / max(1, recovered), 2),
        "final_exit_code": final.returncode,
    }
    print_table(
        f"kill -9: {args.n} items, {killed} kills ({at_submit} right after a submit left),"
        " then one run to the end",
        [
            "completed",
            "files verified",
            "file problems",
            "paid twice",
            "submits/item",
            "recovered",
            "sent again",
            "history calls/recovered",
            "exit",
        ],
        [
            [
                figures["completed"],
                figures["files_verified"],
                figures["file_problems"],
                figures["paid_twice"],
                figures["accepted_submits_per_item"],
                figures["recovered"],
                figures["possible_duplicates"],
                figures["history_calls_per_recovered"],
                figures["final_exit_code"],
            ]
        ],
    )
    write_json(args.json, {**figures, **machine()})


def _keys(ledger: Ledger) -> list[str]:
    conn = sqlite3.connect(ledger.path)
    try:
        return [key for (key,) in conn.execute("SELECT key FROM items")]
    finally:
        conn.close()


if __name__ == "__main__":
    main()
