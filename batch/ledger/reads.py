"""`LedgerReads`: the ledger's read-only queries of items and outputs (`Ledger` inherits them).

Each read holds the ledger's lock for one short SELECT and writes nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterator

from batch.ledger.models import ITEM_COLUMNS, FailureGroup, ItemRow, ItemState
from batch.ledger.plan import LOOKUP, chunked
from batch.outputs.naming import OutputRecord

_COLS = ", ".join(ITEM_COLUMNS)
_WORK = (
    f"SELECT {_COLS} FROM items INDEXED BY items_work WHERE state IN ('pending', 'submitted')"
    " AND (state = 'submitted' OR in_manifest = 1)"
)
_PILOT = " AND (state = 'submitted' OR pilot = 1)"  # a pilot run: its sample (and what is paid)
_WORK_FIRST = f"{_WORK} ORDER BY key LIMIT ?"
_WORK_NEXT = f"{_WORK} AND key > ? ORDER BY key LIMIT ?"
_PILOT_FIRST = f"{_WORK}{_PILOT} ORDER BY key LIMIT ?"
_PILOT_NEXT = f"{_WORK}{_PILOT} AND key > ? ORDER BY key LIMIT ?"


class LedgerReads:
    """Items and outputs as they are; a base of `batch.ledger.store.Ledger`, which owns the
    connection and its lock."""

    _conn: sqlite3.Connection
    _lock: threading.RLock

    def iter_work(self, batch_size: int = 1000, *, pilot: bool = False) -> Iterator[ItemRow]:
        """Pending and submitted items in key order, read `batch_size` at a time (no read is
        held open between batches). Pending items the manifest no longer lists are left out;
        submitted ones are kept, to collect what was already paid for. `pilot`: of the pending
        ones only the pilot's sample."""
        first, after = (_PILOT_FIRST, _PILOT_NEXT) if pilot else (_WORK_FIRST, _WORK_NEXT)
        last: str | None = None
        while True:
            with self._lock:
                if last is None:
                    rows = self._conn.execute(first, (batch_size,)).fetchall()
                else:
                    rows = self._conn.execute(after, (last, batch_size)).fetchall()
            yield from map(ItemRow.from_row, rows)
            if len(rows) < batch_size:
                return
            last = rows[-1]["key"]

    def get(self, key: str) -> ItemRow | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLS} FROM items WHERE key = ?", (key,)).fetchone()
        return None if row is None else ItemRow.from_row(row)

    def state(self, key: str) -> ItemState | None:
        """The item's state alone (what a finalizer checks before it downloads)."""
        with self._lock:
            row = self._conn.execute("SELECT state FROM items WHERE key = ?", (key,)).fetchone()
        return None if row is None else ItemState(row[0])

    def find_request(self, request_id: str) -> ItemRow | None:
        """The item whose current request is `request_id` (what a webhook names), if any."""
        sql = f"SELECT {_COLS} FROM items WHERE request_id = ? LIMIT 1"
        with self._lock:
            row = self._conn.execute(sql, (request_id,)).fetchone()
        return None if row is None else ItemRow.from_row(row)

    def possible_duplicates(self) -> int:
        """Items a submit of which may have been queued twice (an answer lost in transit)."""
        with self._lock:
            row = self._conn.execute("SELECT count(*) FROM items WHERE possible_duplicate = 1")
            return int(row.fetchone()[0])

    def recovery_counts(self) -> tuple[int, int]:
        """Submits whose answer was lost: (re-attached from fal's request history, sent again
        and flagged `possible_duplicate`)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT coalesce(sum(recovered), 0), coalesce(sum(possible_duplicate), 0)"
                " FROM items"
            ).fetchone()
        return int(row[0]), int(row[1])

    def known_request_ids(self, request_ids: Collection[str]) -> set[str]:
        """Of these request ids, the ones fal gave an item of this ledger: now (`items`, also
        after a salvage) or ever (`requests`)."""
        found: set[str] = set()
        for part in chunked(request_ids, LOOKUP):
            marks = ", ".join("?" * len(part))
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT request_id FROM requests WHERE request_id IN ({marks}) UNION"
                    f" SELECT request_id FROM items WHERE request_id IN ({marks})",
                    (*part, *part),
                ).fetchall()
            found.update(r[0] for r in rows)
        return found

    def request_owner(self, request_id: str) -> str | None:
        """The item that fal's request `request_id` belongs to, if any."""
        with self._lock:
            row = self._conn.execute(
                "SELECT item_key FROM requests WHERE request_id = ? UNION ALL"
                " SELECT key FROM items WHERE request_id = ? LIMIT 1",
                (request_id, request_id),
            ).fetchone()
        return None if row is None else str(row[0])

    def counts(self) -> dict[str, int]:
        """Items by state, every state present."""
        result = dict.fromkeys(ItemState, 0)
        with self._lock:
            rows = self._conn.execute("SELECT state, count(*) FROM items GROUP BY state")
            for state, n in rows:
                result[ItemState(state)] = n
        return {str(state): n for state, n in result.items()}

    def manifest_items(self) -> list[tuple[str, str]]:
        """(key, endpoint) of every item the manifest lists."""
        with self._lock:
            rows = self._conn.execute("SELECT key, endpoint FROM items WHERE in_manifest = 1")
            return [(str(key), str(endpoint)) for key, endpoint in rows]

    def pilot_counts(self) -> dict[str, int]:
        """The pilot's items by state (empty without a pilot)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT state, count(*) FROM items WHERE pilot = 1 GROUP BY state"
            ).fetchall()
        return {str(state): int(n) for state, n in rows}

    def redos_to_do(self) -> int:
        """Redos of rejected items (`retry --rejected`) still to be done: the manifest does not
        list them, so a plan does not count them."""
        with self._lock:
            (n,) = self._conn.execute(
                "SELECT count(*) FROM items WHERE redo_of IS NOT NULL"
                " AND state IN ('pending', 'submitted')"
            ).fetchone()
        return int(n)

    def in_flight_count(self) -> int:
        """Items fal may hold: submitted, or with a submit on its way."""
        with self._lock:
            (n,) = self._conn.execute(
                "SELECT count(*) FROM items WHERE state = 'submitted'"
                " OR (state = 'pending' AND submit_started_at IS NOT NULL)"
            ).fetchone()
        return int(n)

    def failures(self, limit: int = 10) -> list[FailureGroup]:
        """Failed items grouped by error kind, largest group first, with one example each."""
        sql = (
            "SELECT coalesce(error_kind, 'unknown'), count(*) AS n, min(key), error_message"
            " FROM items WHERE state = 'failed' GROUP BY error_kind"
            " ORDER BY n DESC, error_kind LIMIT ?"
        )
        with self._lock:
            rows = self._conn.execute(sql, (limit,)).fetchall()
        return [FailureGroup(kind, n, key, message or "") for kind, n, key, message in rows]

    def output_paths(self) -> list[tuple[str, str]]:
        """(item key, path relative to the output folder) of every output image."""
        with self._lock:
            rows = self._conn.execute("SELECT item_key, path FROM outputs").fetchall()
        return [(str(key), str(path)) for key, path in rows]

    def outputs(self, key: str) -> list[OutputRecord]:
        sql = (
            "SELECT idx, path, url, bytes, sha256, width, height, content_type FROM outputs"
            " WHERE item_key = ? ORDER BY idx"
        )
        with self._lock:
            rows = self._conn.execute(sql, (key,)).fetchall()
        return [OutputRecord(*row) for row in rows]
