"""A sharded job on S3 (moto's server), end to end: 4 shard processes against the simulator,
one killed (SIGKILL) mid-run and run again on a fresh disk, then `merge`.

Nothing is paid twice (at most one accepted submit per item, or the item is flagged
`possible_duplicate`), the merged ledger is the union of the shards, and every image object in
the bucket has the sha256 the ledger recorded."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
from support import TEST_KEY, item_rows, write_csv

from batch.job.shards import Shard
from batch.ledger import LEDGER_FILE
from batch.remote import open_store
from batch.sim import Simulator

pytest.importorskip("obstore")
pytest.importorskip("moto")

N_ITEMS = 48
SHARDS = 4
VICTIM = 1
RUN_TIMEOUT = 90.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env["FAL_KEY"] = TEST_KEY
    return env


async def _start(manifest: Path, root: str, index: int, work: Path, sim_url: str):
    argv = [sys.executable, "-m", "batch", "run", str(manifest), "--queue-url", sim_url]
    argv += ["--output", root, "--shard", f"{index}/{SHARDS}", "--work-dir", str(work)]
    argv += ["--concurrency", "1", "--history-wait", "3s", "--log-format", "json"]
    argv += ["--lease-ttl", "2s"]  # a killed shard's lease lapses in 2 s
    return await asyncio.create_subprocess_exec(
        *argv,
        env=_env(),
        cwd=work.parent,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _finish(proc) -> tuple[int, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout=RUN_TIMEOUT)
    return proc.returncode, (out + err).decode()


def _completed(work: Path, shard: Shard) -> int:
    path = work / "shards" / shard.label / LEDGER_FILE
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM items WHERE state='completed'").fetchone()[0]
    except sqlite3.Error:
        return 0


async def test_four_shards_on_s3_a_killed_one_rerun_on_a_new_disk_then_merged(moto_s3, tmp_path):
    manifest = tmp_path / "m.csv"
    write_csv(manifest, item_rows(N_ITEMS))
    root = moto_s3.url("jobs/catalog")
    store = open_store(root)
    victim = Shard(VICTIM, SHARDS)
    async with Simulator(key=TEST_KEY, capacity=8, latency="uniform:0.3,0.6") as sim:
        procs = {
            i: await _start(manifest, root, i, tmp_path / f"work{i}", sim.url)
            for i in range(SHARDS)
        }
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        snapshot = f"shards/{victim.label}/ledger.sqlite"
        # Killed once it has completed items and its first snapshot is in the bucket.
        while _completed(tmp_path / f"work{VICTIM}", victim) < 3 or not await store.exists(
            snapshot
        ):
            assert procs[VICTIM].returncode is None, await _finish(procs[VICTIM])
            assert loop.time() < deadline, "the victim shard made no progress"
            await asyncio.sleep(0.05)
        procs[VICTIM].send_signal(signal.SIGKILL)
        code, text = await _finish(procs[VICTIM])
        assert code == -signal.SIGKILL, text
        for i in set(procs) - {VICTIM}:
            code, text = await _finish(procs[i])
            assert code == 0, text
        # The pod comes back elsewhere: a new, empty work folder.
        code, text = await _finish(
            await _start(manifest, root, VICTIM, tmp_path / "work-new", sim.url)
        )
        assert code == 0, text
        assert "restored the ledger from" in text  # the snapshot, then the journal
        (summary,) = [
            json.loads(line)["this_run"] for line in text.splitlines() if '"summary"' in line
        ]
        assert summary["completed"] > 0  # what the killed run had not finished, or lost
        merge = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "batch", "merge", root, "--json",
            env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(merge.communicate(), timeout=RUN_TIMEOUT)
        assert merge.returncode == 0, err.decode()
        merged = json.loads(out)
        assert merged["items"] == N_ITEMS and merged["shards"] == SHARDS
        assert merged["missing_shards"] == []

        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "batch", "status", root, "--json",
            env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(status.communicate(), timeout=RUN_TIMEOUT)
        state = json.loads(out)
        assert state["totals"]["completed"] == N_ITEMS and len(state["by_shard"]) == SHARDS

        ledger = tmp_path / "merged.sqlite"
        await store.get_file("merged/ledger.sqlite", ledger)
        with sqlite3.connect(ledger) as conn:
            rows = conn.execute(
                "SELECT key, state, endpoint, request, possible_duplicate FROM items"
            ).fetchall()
            outputs = conn.execute("SELECT path, sha256 FROM outputs").fetchall()
        assert sorted(r[0] for r in rows) == sorted(row["id"] for row in item_rows(N_ITEMS))
        assert {r[1] for r in rows} == {"completed"}
        for key, _state, endpoint, request, flagged in rows:
            submits = sim.counters.submits_for(endpoint, json.loads(request))
            assert submits == 1 or (submits > 1 and flagged), (key, submits)
        # Every output image is in the bucket, byte for byte what the ledger recorded.
        assert len(outputs) >= N_ITEMS
        for path, sha in outputs:
            key = path.removeprefix("../")
            assert hashlib.sha256(await store.get(key)).hexdigest() == sha, key
        print(
            f"figures: items {N_ITEMS}, shards {SHARDS}, kills 1, rerun {summary},"
            f" merge {merged['seconds']:.2f} s, objects verified {len(outputs)}"
        )
        assert await store.exists("merged/report.html")
        assert await store.exists("merged/results.csv")
