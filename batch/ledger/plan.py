"""`Ledger.plan`: reconcile a manifest's items with the ledger, in one transaction, in bounded
memory.

A plan is all or nothing: every chunk is written inside one transaction, so an exception —
from the ledger, or from the items themselves (`batch.manifest.ManifestCheck` raises when the
manifest turns out invalid at its end) — rolls it all back.

Items are read in chunks of `CHUNK`, each item turned into the row it is stored as when it is
read (then only strings are held); the work per chunk is a few batched statements, never a
query per item:

- into an empty ledger (a first run), insert the chunk as it is while the keys come in
  ascending order (ids such as ``sku-0000001``, ``sku-0000002``…: the key indexes grow at
  their end). From the first chunk that is not, append the chunks to a temporary staging
  table instead; at the end, one `INSERT … SELECT … ORDER BY key … ON CONFLICT DO NOTHING`
  moves them into `items`: SQLite sorts them, so the key indexes are built in order instead of
  touched at random (several times faster for hash keys), and a key already there is a
  duplicate (the first wins);
- into a ledger with items, look up the chunk's keys (`WHERE key IN (...)`), insert the new
  ones, update the moved or redone ones, and record the keys in a temporary table of seen
  keys, so that duplicates are spotted and, at the end, one UPDATE marks the items this
  manifest no longer lists.

Rows are inserted `ROWS_PER_INSERT` to a statement: one multi-row INSERT costs a fraction of
executemany's statement per row. Nothing ever holds more than a chunk of items or rows.
"""

from __future__ import annotations

import itertools
import operator
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from batch.ledger.models import (
    Conflict,
    ItemLike,
    PlanResult,
    canonical_json,
    hash_canonical,
)

Hasher = Callable[[str, Mapping[str, Any]], str]
Row = tuple[str, str, str, str, str]  # an item: key, source, endpoint, request, request_hash
T = TypeVar("T")

CHUNK = 5000  # items per batch of statements
LOOKUP = 500  # keys per `IN (...)` (well under SQLite's variable limit)
ROWS_PER_INSERT = 500  # rows per multi-row INSERT (faster than executemany; bigger is slower)
# SQLite's page cache while planning, and its sorter's memory (by default 2 MiB): a plan's
# indexes stay in memory rather than being read back from the WAL.
PLAN_CACHE_KIB = 64 * 1024

_INSERT_COLUMNS = """
    INSERT INTO items (key, source, endpoint, request, request_hash, state, attempts,
                       created_at, updated_at, run_id, in_manifest)
"""
_STAGE_TABLE = """
    CREATE TEMP TABLE plan_new (key TEXT NOT NULL, source TEXT NOT NULL, endpoint TEXT NOT NULL,
                                request TEXT NOT NULL, request_hash TEXT NOT NULL)
"""
_STAGE = "INSERT INTO temp.plan_new (key, source, endpoint, request, request_hash) VALUES "
# ?1 = now, ?2 = run id. The WHERE spares SQLite's parser an ambiguity of SELECT and upsert.
_MERGE = f"""{_INSERT_COLUMNS}
    SELECT key, source, endpoint, request, request_hash, 'pending', 0, ?1, ?1, ?2, 1
    FROM temp.plan_new WHERE true ORDER BY key, rowid
    ON CONFLICT (key) DO NOTHING
"""
_REDO = """
    UPDATE items SET source = ?, endpoint = ?, request = ?, request_hash = ?, state = 'pending',
        attempts = 0, request_id = NULL, status_url = NULL, response_url = NULL,
        cancel_url = NULL, possible_duplicate = 0, not_before = NULL, error_kind = NULL,
        error_message = NULL, error_type = NULL, seed = NULL, timings = NULL, nsfw = NULL,
        billable_units = NULL, submit_started_at = NULL, sent_payload = NULL, recovered = 0,
        updated_at = ?,
        submitted_at = NULL, completed_at = NULL, run_id = COALESCE(?, run_id)
    WHERE key = ?
"""


def chunked(iterable: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(iterable)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


@dataclass
class _Planner:
    conn: sqlite3.Connection
    hasher: Hasher | None
    redo_changed: bool
    now: float
    run_id: int | None
    conflict_limit: int
    fresh: bool = False  # the ledger had no items when the plan began
    last_key: str | None = ""  # fresh ledger: the greatest key so far while keys ascend, else None
    staged: int = 0  # fresh ledger: rows in temp.plan_new
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("total", "new", "completed", "pending", "submitted", "failed", "changed", "dupes"), 0
        )
    )
    conflicts: list[Conflict] = field(default_factory=list)

    def row(self, item: ItemLike) -> Row:
        """What the ledger stores of an item: key, source, endpoint, canonical payload JSON and
        request hash (those the item carries, if any)."""
        request: str | None = getattr(item, "request_json", None)
        known: str | None = getattr(item, "request_hash", None) if request else None
        if not request:
            request = canonical_json(item.payload)
        if self.hasher is not None:
            known = self.hasher(item.endpoint, item.payload)
        elif not known:
            known = hash_canonical(item.endpoint, request)
        return (item.key, item.source, item.endpoint, request, known)

    def chunks(self, items: Iterable[ItemLike], size: int) -> Iterator[list[Row]]:
        """The items as rows, `size` at a time. An item is dropped as soon as its row is made:
        only strings are held, which the garbage collector stops tracking at once."""
        it, row = iter(items), self.row
        while rows := [row(item) for item in itertools.islice(it, size)]:
            yield rows

    def process(self, rows: list[Row]) -> None:
        if self.fresh:
            self._insert_fresh(rows)
        else:
            self._reconcile(rows)

    def _insert_fresh(self, rows: list[Row]) -> None:
        """Into an empty ledger: every item is new, inserted now while the keys ascend (then
        none can be a duplicate), else staged, to be inserted at the end (`finish`)."""
        keys = [row[0] for row in rows]
        if self.last_key is not None and self.last_key < keys[0] and _ascending(keys):
            self.last_key = keys[-1]
            inserted = _insert_rows(self.conn, rows, _new_items_sql, [self.now, self.run_id])
            self.counts["total"] += inserted
            self.counts["new"] += inserted
        else:
            self.last_key = None
            self.staged += _insert_rows(self.conn, rows, _stage_sql, [])

    def prepare(self, rows: list[Row]) -> list[Row]:
        """The chunk without keys already seen in this chunk or an earlier one."""
        unique: dict[str, Row] = {}
        for row in rows:
            if row[0] in unique:
                self.counts["dupes"] += 1
            else:
                unique[row[0]] = row
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

    def _reconcile(self, rows: list[Row]) -> None:
        prepared = self.prepare(rows)
        known = self.existing([row[0] for row in prepared])
        new: list[Row] = []
        redo: list[Row] = []
        moved: list[tuple[str, str]] = []
        for row in prepared:
            key, source, _, _, digest = row
            old = known.get(key)
            if old is None:
                new.append(row)
            elif old[1] != digest:
                self.counts["changed"] += 1
                if self.redo_changed:
                    redo.append(row)
                elif len(self.conflicts) < self.conflict_limit:
                    self.conflicts.append(Conflict(key, source, old[2]))
            else:
                self.counts[old[0]] += 1
                if old[2] != source:
                    moved.append((source, key))
        self.counts["total"] += len(prepared)
        self.counts["new"] += len(new)
        self.conn.executemany(
            "INSERT INTO temp.plan_seen (key) VALUES (?)", [(row[0],) for row in prepared]
        )
        _insert_rows(self.conn, new, _new_items_sql, [self.now, self.run_id])
        self.conn.executemany("UPDATE items SET source = ? WHERE key = ?", moved)
        self.conn.executemany(
            _REDO,
            [
                (source, endpoint, request, digest, self.now, self.run_id, key)
                for key, source, endpoint, request, digest in redo
            ],
        )
        self.conn.executemany("DELETE FROM outputs WHERE item_key = ?", [(r[0],) for r in redo])

    def finish(self) -> int:
        """Mark which items this manifest lists; return how many it no longer lists."""
        if self.fresh:  # insert the staged items: a key already inserted is a duplicate
            inserted = self.conn.execute(_MERGE, (self.now, self.run_id)).rowcount
            self.counts["total"] += inserted
            self.counts["new"] += inserted
            self.counts["dupes"] += self.staged - inserted
            return 0  # every item is this plan's, inserted as listed
        self.conn.execute(
            "UPDATE items SET in_manifest = 0 WHERE in_manifest = 1 AND redo_of IS NULL"
            " AND key NOT IN (SELECT key FROM temp.plan_seen)"
        )
        self.conn.execute(
            "UPDATE items SET in_manifest = 1 WHERE in_manifest = 0"
            " AND key IN (SELECT key FROM temp.plan_seen)"
        )
        missing_sql = "SELECT count(*) FROM items WHERE in_manifest = 0"  # redos stay listed
        (missing,) = self.conn.execute(missing_sql).fetchone()
        return int(missing)


def _insert_rows(
    conn: sqlite3.Connection, rows: list[Row], sql: Callable[[int], str], first: list[Any]
) -> int:
    """Insert rows, `ROWS_PER_INSERT` to a statement `sql(rows)` whose parameters are `first`
    then 5 per row; how many were inserted."""
    variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    size = max(1, min(ROWS_PER_INSERT, (variables - len(first)) // 5))
    inserted = 0
    for part in chunked(rows, size):
        params = [*first, *itertools.chain.from_iterable(part)]
        inserted += conn.execute(sql(len(part)), params).rowcount
    return inserted


def _ascending(keys: list[str]) -> bool:
    """Whether each key is greater than the one before (SQLite's BINARY order of UTF-8 text is
    the order of code points, as Python's)."""
    return all(map(operator.lt, keys, itertools.islice(keys, 1, None)))


@lru_cache(maxsize=8)
def _stage_sql(rows: int) -> str:
    return _STAGE + ",".join(["(?,?,?,?,?)"] * rows)


@lru_cache(maxsize=8)
def _new_items_sql(rows: int) -> str:
    """INSERT of `rows` new items, taking ?1 = now, ?2 = run id, then 5 values per row."""
    values = ",".join(
        f"(?{n},?{n + 1},?{n + 2},?{n + 3},?{n + 4},'pending',0,?1,?1,?2,1)"
        for n in range(3, 3 + 5 * rows, 5)
    )
    return f"{_INSERT_COLUMNS} VALUES {values}"


@contextmanager
def _cache_size(conn: sqlite3.Connection, kib: int) -> Iterator[None]:
    """A larger page cache for a while: a big plan's indexes stay in memory, not re-read."""
    (previous,) = conn.execute("PRAGMA cache_size").fetchone()
    conn.execute(f"PRAGMA cache_size = {-int(kib)}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size = {int(previous)}")


def _drop_temp_tables(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TABLE IF EXISTS temp.plan_seen")
    conn.execute("DROP TABLE IF EXISTS temp.plan_new")


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
            _drop_temp_tables(conn)
            if planner.fresh:
                conn.execute(_STAGE_TABLE)
            else:
                conn.execute("CREATE TEMP TABLE plan_seen (key TEXT PRIMARY KEY)")
            for rows in planner.chunks(items, chunk_size):
                planner.process(rows)
            missing = planner.finish()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            _drop_temp_tables(conn)
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
