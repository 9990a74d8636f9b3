"""`Ledger.plan`: reconcile a manifest's items with the ledger, in one transaction, in bounded
memory.

A plan is all or nothing: every chunk is written inside one transaction, so an exception —
from the ledger, or from the items themselves (`batch.manifest.ManifestCheck` raises when the
manifest turns out invalid at its end) — rolls it all back.

Items are read in chunks of `CHUNK`; the work per chunk is a few batched statements, never a
query per item:

- into an empty ledger (a first run), one `INSERT … ON CONFLICT DO NOTHING` (executemany): a
  key that is already there was seen earlier in this plan, a duplicate (the first wins);
- into a ledger with items, look up the chunk's keys (`WHERE key IN (...)`), insert the new
  ones, update the moved or redone ones, and record the keys in a temporary table of seen
  keys, so that duplicates are spotted and, at the end, one UPDATE marks the items this
  manifest no longer lists.

Nothing ever holds more than a chunk of items or rows.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from batch.ledger.models import (
    Conflict,
    ItemLike,
    PlanResult,
    canonical_json,
    hash_canonical,
)

Hasher = Callable[[str, Mapping[str, Any]], str]
T = TypeVar("T")

CHUNK = 5000  # items per batch of statements
LOOKUP = 500  # keys per `IN (...)` (well under SQLite's variable limit)
PLAN_CACHE_KIB = 64 * 1024  # SQLite's page cache while planning (default: 2 MiB)

_INSERT = """
    INSERT INTO items (key, source, endpoint, request, request_hash, state, attempts,
                       created_at, updated_at, run_id, in_manifest)
    VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, 1)
"""
_INSERT_NEW = _INSERT + " ON CONFLICT (key) DO NOTHING"
_REDO = """
    UPDATE items SET source = ?, endpoint = ?, request = ?, request_hash = ?, state = 'pending',
        attempts = 0, request_id = NULL, status_url = NULL, response_url = NULL,
        cancel_url = NULL, possible_duplicate = 0, not_before = NULL, error_kind = NULL,
        error_message = NULL, seed = NULL, timings = NULL, nsfw = NULL, updated_at = ?,
        submitted_at = NULL, completed_at = NULL, run_id = COALESCE(?, run_id)
    WHERE key = ?
"""


def chunked(iterable: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(iterable)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


@dataclass
class _Prepared:
    key: str
    source: str
    endpoint: str
    request: str
    hash: str


@dataclass
class _Planner:
    conn: sqlite3.Connection
    hasher: Hasher | None
    redo_changed: bool
    now: float
    run_id: int | None
    conflict_limit: int
    fresh: bool = False  # the ledger had no items when the plan began
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("total", "new", "completed", "pending", "submitted", "failed", "changed", "dupes"), 0
        )
    )
    conflicts: list[Conflict] = field(default_factory=list)

    def canonical(self, item: ItemLike) -> tuple[str, str]:
        """(canonical payload JSON, request hash) of an item; those it carries, if any."""
        request: str | None = getattr(item, "request_json", None)
        known: str | None = getattr(item, "request_hash", None) if request else None
        if not request:
            request = canonical_json(item.payload)
        if self.hasher is not None:
            return request, self.hasher(item.endpoint, item.payload)
        return request, known or hash_canonical(item.endpoint, request)

    def process(self, items: list[ItemLike]) -> None:
        if self.fresh:
            self._insert_all(items)
        else:
            self._reconcile(self.prepare(items))

    def _insert_all(self, items: list[ItemLike]) -> None:
        """Into an empty ledger: every key not inserted by this plan already is new."""
        now, run_id, canonical = self.now, self.run_id, self.canonical
        rows = [
            (item.key, item.source, item.endpoint, *canonical(item), now, now, run_id)
            for item in items
        ]
        inserted = self.conn.executemany(_INSERT_NEW, rows).rowcount
        self.counts["total"] += inserted
        self.counts["new"] += inserted
        self.counts["dupes"] += len(rows) - inserted

    def prepare(self, items: list[ItemLike]) -> list[_Prepared]:
        """Hash the chunk, dropping keys already seen in this chunk or an earlier one."""
        unique: dict[str, _Prepared] = {}
        for item in items:
            if item.key in unique:
                self.counts["dupes"] += 1
                continue
            request, digest = self.canonical(item)
            unique[item.key] = _Prepared(item.key, item.source, item.endpoint, request, digest)
        for keys in chunked(list(unique), LOOKUP):
            marks = ",".join("?" * len(keys))
            sql = f"SELECT key FROM temp.plan_seen WHERE key IN ({marks})"
            for (key,) in self.conn.execute(sql, keys):
                del unique[key]
                self.counts["dupes"] += 1
        return list(unique.values())

    def existing(self, keys: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """key -> (state, request_hash, source) for the chunk's keys that are known."""
        found: dict[str, tuple[str, str, str]] = {}
        for part in chunked(keys, LOOKUP):
            marks = ",".join("?" * len(part))
            sql = f"SELECT key, state, request_hash, source FROM items WHERE key IN ({marks})"
            for key, state, old_hash, source in self.conn.execute(sql, part):
                found[key] = (state, old_hash, source)
        return found

    def _reconcile(self, prepared: list[_Prepared]) -> None:
        known = self.existing([p.key for p in prepared])
        new: list[tuple[Any, ...]] = []
        redo: list[_Prepared] = []
        moved: list[tuple[str, str]] = []
        for p in prepared:
            old = known.get(p.key)
            if old is None:
                row = (p.key, p.source, p.endpoint, p.request, p.hash, self.now, self.now)
                new.append((*row, self.run_id))
            elif old[1] != p.hash:
                self.counts["changed"] += 1
                if self.redo_changed:
                    redo.append(p)
                elif len(self.conflicts) < self.conflict_limit:
                    self.conflicts.append(Conflict(p.key, p.source, old[2]))
            else:
                self.counts[old[0]] += 1
                if old[2] != p.source:
                    moved.append((p.source, p.key))
        self.counts["total"] += len(prepared)
        self.counts["new"] += len(new)
        self.conn.executemany(
            "INSERT INTO temp.plan_seen (key) VALUES (?)", [(p.key,) for p in prepared]
        )
        self.conn.executemany(_INSERT, new)
        self.conn.executemany("UPDATE items SET source = ? WHERE key = ?", moved)
        self.conn.executemany(
            _REDO,
            [(p.source, p.endpoint, p.request, p.hash, self.now, self.run_id, p.key) for p in redo],
        )
        self.conn.executemany("DELETE FROM outputs WHERE item_key = ?", [(p.key,) for p in redo])

    def finish(self) -> int:
        """Mark which items this manifest lists; return how many it no longer lists."""
        if self.fresh:
            return 0  # every item is this plan's, inserted as listed
        self.conn.execute(
            "UPDATE items SET in_manifest = 0 WHERE in_manifest = 1"
            " AND key NOT IN (SELECT key FROM temp.plan_seen)"
        )
        self.conn.execute(
            "UPDATE items SET in_manifest = 1 WHERE in_manifest = 0"
            " AND key IN (SELECT key FROM temp.plan_seen)"
        )
        (missing,) = self.conn.execute(
            "SELECT count(*) FROM items WHERE in_manifest = 0"
        ).fetchone()
        return int(missing)


@contextmanager
def _cache_size(conn: sqlite3.Connection, kib: int) -> Iterator[None]:
    """A larger page cache for a while: a big plan's indexes stay in memory, not re-read."""
    (previous,) = conn.execute("PRAGMA cache_size").fetchone()
    conn.execute(f"PRAGMA cache_size = {-int(kib)}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size = {int(previous)}")


def plan_items(
    conn: sqlite3.Connection,
    items: Iterable[ItemLike],
    *,
    hasher: Hasher | None,
    redo_changed: bool,
    now: float,
    run_id: int | None,
    conflict_limit: int,
    lock: threading.RLock,
    chunk_size: int = CHUNK,
) -> PlanResult:
    """See `Ledger.plan`. One transaction; `lock` is held for the whole plan."""
    planner = _Planner(conn, hasher, redo_changed, now, run_id, conflict_limit)
    with lock, _cache_size(conn, PLAN_CACHE_KIB):
        conn.execute("BEGIN IMMEDIATE")
        try:
            planner.fresh = conn.execute("SELECT 1 FROM items LIMIT 1").fetchone() is None
            if not planner.fresh:
                conn.execute("DROP TABLE IF EXISTS temp.plan_seen")
                conn.execute("CREATE TEMP TABLE plan_seen (key TEXT PRIMARY KEY)")
            for chunk in chunked(items, chunk_size):
                planner.process(chunk)
            missing = planner.finish()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.execute("DROP TABLE IF EXISTS temp.plan_seen")
    c = planner.counts
    return PlanResult(
        total=c["total"],
        new=c["new"],
        completed=c["completed"],
        pending=c["pending"],
        submitted=c["submitted"],
        failed=c["failed"],
        changed=c["changed"],
        duplicates=c["dupes"],
        missing=missing,
        redo_changed=redo_changed,
        conflicts=tuple(planner.conflicts),
    )
