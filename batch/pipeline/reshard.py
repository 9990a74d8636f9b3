"""`firered-batch reshard ROOT --shards M`: divide a local sharded job anew.

A job's N is fixed so that every item stays in one shard, whose ledger alone decides whether it
was sent. Changing N moves items between shards, so it is done only when nothing is in flight
(a request in flight belongs to its shard's ledger until it ends) and no shard is running (each
shard's lock is taken). The shards are merged (`merge_ledgers`), each item with its outputs,
request ids and image files goes to the shard its key hashes to under M, and the old shard
folders — their ledgers, reports and anything left — are set aside, never deleted.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from batch.errors import InvalidInputError
from batch.job.layout import (
    JobRecord,
    claim_local_record,
    is_store_url,
    local_shards,
    read_local_record,
)
from batch.job.shards import Shard, shard_of
from batch.ledger import LEDGER_FILE, Ledger
from batch.ledger.merge import COPIED, merge_ledgers
from batch.outputs import run_lock
from batch.pipeline.shards import NotAJobRootError


class ReshardError(InvalidInputError):
    """A job that cannot be divided anew now; exit 2, nothing changed."""


@dataclass(frozen=True)
class Resharded:
    before: int
    after: int
    items: int
    set_aside: Path


def reshard(root: Path, count: int) -> Resharded:
    if is_store_url(str(root)):
        raise ReshardError("reshard works on a local job root (copy the bucket's to disk first)")
    record = read_local_record(root)
    if record is None:
        raise NotAJobRootError(f"{root}: no job.json here: not the root of a sharded job")
    shards = local_shards(root, record.shards)
    with contextlib.ExitStack() as locks:
        for _, folder in shards:
            locks.enter_context(run_lock(folder))  # LockHeldError (exit 5): a shard is running
        for label, folder in shards:
            with Ledger.open(folder, create=False) as ledger:
                if n := ledger.in_flight_count():
                    raise ReshardError(
                        f"shard {label} has {n} requests in flight: run it to its end first"
                    )
        with tempfile.TemporaryDirectory(prefix="firered-reshard-", dir=root) as tmp:
            merged = Path(tmp) / "merged"
            result = merge_ledgers(
                [(label, folder / LEDGER_FILE, f"{label}/") for label, folder in shards], merged
            )
            fresh = Path(tmp) / "shards"
            for index in range(count):
                _write_shard(merged / LEDGER_FILE, root / "shards", fresh, Shard(index, count))
            aside = root / f"shards.set-aside-{time.strftime('%Y%m%d-%H%M%S')}"
            (root / "shards").rename(aside)
            fresh.rename(root / "shards")
        (root / "job.json").unlink()
        claim_local_record(root, JobRecord(record.name, count))
    return Resharded(record.shards, count, result.items, aside)


def _write_shard(merged: Path, old: Path, new: Path, shard: Shard) -> None:
    """The items of `shard` from the merged ledger (output paths ``<old shard>/…``), their
    image files moved from the old shard folders."""
    folder = new / shard.label
    Ledger.open(folder).close()
    conn = sqlite3.connect(folder / LEDGER_FILE, isolation_level=None)
    conn.create_function("shard_of", 2, shard_of, deterministic=True)
    try:
        conn.execute("ATTACH DATABASE ? AS m", (f"file:{merged}?mode=ro",))
        conn.execute("BEGIN IMMEDIATE")
        key_of = {"items": "key", "outputs": "item_key", "requests": "item_key"}
        for table in COPIED:
            columns = [row[1] for row in conn.execute(f"PRAGMA main.table_info({table})")]
            values = [
                "substr(path, instr(path, '/') + 1)" if (table, c) == ("outputs", "path") else c
                for c in columns
            ]
            conn.execute(
                f"INSERT INTO main.{table} ({', '.join(columns)}) SELECT {', '.join(values)}"
                f" FROM m.{table} WHERE shard_of({key_of[table]}, ?) = ?",
                (shard.count, shard.index),
            )
        moves = conn.execute(
            "SELECT path FROM m.outputs WHERE shard_of(item_key, ?) = ?",
            (shard.count, shard.index),
        ).fetchall()
        for (path,) in moves:
            source = old / path
            target = folder / path.split("/", 1)[1]
            if source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
        conn.execute("COMMIT")
    finally:
        conn.close()
