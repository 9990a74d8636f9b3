"""`firered-batch merge`: one ledger for a sharded job, built from its shards' ledgers.

Derived and read-only towards the shards: each shard's ledger is attached read-only and its
items, outputs and request ids are copied with `INSERT … SELECT` (SQLite does the work). Shards
are disjoint by key, so a key in two shards means they were not divided the same way: that is
an error, found by a lookup before each shard is copied. Output paths are rewritten to point
from the merged folder into the shard's (``../shards/00003-of-00008/images/…``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from batch.errors import InvalidInputError
from batch.ledger.store import LEDGER_FILE, Ledger

COPIED = ("items", "outputs", "requests")


class MergeError(InvalidInputError):
    """Shards that cannot be merged (a key in two of them); exit 2."""


@dataclass(frozen=True)
class MergeResult:
    shards: int
    items: int
    outputs: int


def merge_ledgers(shards: Sequence[tuple[str, Path, str]], dest: Path) -> MergeResult:
    """Merge `shards` — (label, ledger file, prefix of its output paths as seen from `dest`) —
    into a new ledger in `dest` (an earlier merged ledger there is replaced)."""
    dest.mkdir(parents=True, exist_ok=True)
    for leftover in (LEDGER_FILE, LEDGER_FILE + "-wal", LEDGER_FILE + "-shm"):
        (dest / leftover).unlink(missing_ok=True)
    Ledger.open(dest).close()  # created and migrated to this version's tables
    conn = sqlite3.connect(dest / LEDGER_FILE, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        done: list[str] = []
        for label, path, prefix in shards:
            try:
                conn.execute("ATTACH DATABASE ? AS shard", (f"file:{path}?mode=ro",))
                _copy(conn, label, prefix, done)
            except sqlite3.DatabaseError as exc:  # the merged ledger is removed (below)
                raise MergeError(
                    f"shard {label}: its ledger {path} cannot be read ({exc}); nothing was"
                    f" merged. `firered-batch doctor {path.parent} --recover` repairs it"
                ) from None
            conn.execute("COMMIT")  # DETACH needs no open transaction on the attached file
            conn.execute("DETACH DATABASE shard")
            conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")
        (items,) = conn.execute("SELECT count(*) FROM items").fetchone()
        (outputs,) = conn.execute("SELECT count(*) FROM outputs").fetchone()
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
        for leftover in (LEDGER_FILE, LEDGER_FILE + "-wal", LEDGER_FILE + "-shm"):
            (dest / leftover).unlink(missing_ok=True)  # never a half-merged ledger
        raise
    conn.close()
    return MergeResult(len(shards), int(items), int(outputs))


def _copy(conn: sqlite3.Connection, label: str, prefix: str, done: list[str]) -> None:
    clash = conn.execute(
        "SELECT key FROM shard.items WHERE key IN (SELECT key FROM main.items) LIMIT 1"
    ).fetchone()
    if clash is not None:
        raise MergeError(
            f"item {clash[0]!r} is in shard {label} and in one of {', '.join(done)}: the"
            " shards were not divided the same way; nothing was merged"
        )
    done.append(label)
    for table in COPIED:
        columns = _shared_columns(conn, table)
        if not columns:
            continue  # a shard of a version without this table
        names = ", ".join(columns)
        values = ", ".join(
            "? || path" if (table == "outputs" and c == "path") else c for c in columns
        )
        params = (prefix,) if table == "outputs" else ()
        verb = "INSERT OR IGNORE" if table == "requests" else "INSERT"
        conn.execute(
            f"{verb} INTO main.{table} ({names}) SELECT {values} FROM shard.{table}", params
        )


def _shared_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """The columns of `table` in both ledgers (a shard of an older version has fewer)."""
    mine = [row[1] for row in conn.execute(f"PRAGMA main.table_info({table})")]
    theirs = {row[1] for row in conn.execute(f"PRAGMA shard.table_info({table})")}
    return [c for c in mine if c in theirs]
