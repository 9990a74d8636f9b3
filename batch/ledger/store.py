"""`Ledger`: the SQLite state of every item, one short transaction per change.

The ledger stores only what its callers hand it: requests (the endpoint's payload), fal's
request ids and URLs, error kinds and messages, output records, and run settings. It never
reads the environment or a key. Callers must not pass secrets in; as a second guard, run
settings whose names look like credentials (`api_key`, `token`, `secret`, `password`, …) are
stored as "<redacted>" (DESIGN invariant 6).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from batch.crashpoints import crashpoint
from batch.ledger.checkpoint import INTERVAL as CHECKPOINT_INTERVAL
from batch.ledger.checkpoint import Checkpointer, background_checkpoints
from batch.ledger.export import ExportPaths, export_results
from batch.ledger.migrations import applied_migrations, migrate
from batch.ledger.models import (
    InvalidTransitionError,
    ItemLike,
    ItemState,
    PlanResult,
    UnknownItemError,
    canonical_json,
)
from batch.ledger.plan import LOOKUP, Hasher, chunked, plan_items
from batch.ledger.reads import LedgerReads
from batch.ledger.runs import LedgerRuns
from batch.ledger.tx import transaction
from batch.ledger.uploads import UploadCache
from batch.outputs.naming import OutputRecord, check_output_path

LEDGER_FILE = "ledger.sqlite"
# Failures after fal's request succeeded: `retry` re-attaches to the request (DESIGN inv. 3).
REATTACH_KINDS = ("download",)
_P, _S, _F = ItemState.pending, ItemState.submitted, ItemState.failed
# A try is counted when it is submitted, or when it fails before it got that far.
_COUNT_UNSUBMITTED_TRY = "attempts = attempts + (state = 'pending')"


@functools.cache
def _update_sql(assignments: str, allowed: int) -> str:
    """A transition's UPDATE (built once per kind: transitions run hundreds of times a second)."""
    marks = ", ".join("?" * allowed)
    return (
        f"UPDATE items SET {assignments}, updated_at = ?, run_id = COALESCE(?, run_id)"
        f" WHERE key = ? AND state IN ({marks})"
    )


class Ledger(LedgerReads, LedgerRuns):
    """The results ledger of one output folder (`<output>/ledger.sqlite`).

    Every method is one short transaction (or a few, for `reset_to_pending`; `plan` is one long
    one, made before the run), so it may be called straight from the event loop. The
    connection may be used from another thread (`asyncio.to_thread(ledger.plan, items)`);
    calls are serialised by a lock. `export` reads through its own connection, so it can run in
    a thread while the loop keeps writing. Here: opening, planning, transitions and exports;
    the read-only queries come from `LedgerReads` (reads.py), runs and meta from `LedgerRuns`
    (runs.py).
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._conn = conn
        self.path = path
        self._clock = clock
        self._lock = threading.RLock()
        self.run_id: int | None = None  # stamped on every item this run changes

    @classmethod
    def open(
        cls,
        output_dir: Path | str,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> Ledger:
        """Open (creating the folder and database if needed) and migrate the ledger.

        WAL mode; `synchronous="NORMAL"` survives a process crash, `"FULL"` a power loss too.
        """
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LEDGER_FILE
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode for {path} (got {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, clock=clock)

    @property
    def output_dir(self) -> Path:
        return self.path.parent

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def uploads(self) -> UploadCache:
        """Local input files and the upload cache (`batch.ledger.uploads`)."""
        return UploadCache(self._conn, self._lock, self._clock)

    def applied_migrations(self) -> list[str]:
        with self._lock:
            return applied_migrations(self._conn)

    def background_checkpoints(
        self, interval: float = CHECKPOINT_INTERVAL
    ) -> AbstractContextManager[Checkpointer]:
        """A block during which WAL checkpoints run in a thread of their own, not inside
        this connection's commits (`batch.ledger.checkpoint`): for a run's event loop."""
        return background_checkpoints(self._conn, self._lock, self.path, interval)

    def group(self) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction for many changes: the transitions called inside it are part of it
        and are committed (or rolled back) together at its end. A transition that raises a
        `LedgerError` or `ValueError` has written nothing (its checks come before its writes,
        and its UPDATE matched no row), so the group may go on without it."""
        return transaction(self._conn, self._lock)

    _tx = group  # each transition's own transaction, which joins a group's when inside one

    # --- planning --------------------------------------------------------------------------

    def plan(
        self,
        items: Iterable[ItemLike],
        *,
        redo_changed: bool = False,
        hasher: Hasher | None = None,
        conflict_limit: int = 1000,
    ) -> PlanResult:
        """Reconcile the manifest's items with the ledger, in one transaction, in bounded memory.

        All or nothing: an exception raised while the items are read (e.g. `ManifestError` from
        `batch.manifest.ManifestCheck`, at the end of an invalid manifest) rolls the whole plan
        back, and is raised.

        New keys are inserted `pending`; known keys are counted by state (their `source` is
        updated if the row moved). A known key whose request hash differs is `changed`: listed
        in `conflicts` (up to `conflict_limit`) and left alone, or with `redo_changed` reset to
        `pending` with the new request, its outputs rows deleted. Repeated keys count as
        `duplicates` (the first wins). Items the manifest no longer lists get `in_manifest = 0`
        and are counted as `missing`. `hasher(endpoint, payload)` gives the request hash
        (e.g. `batch.manifest.request_hash`); by default it is `request_hash`: sha256 of the
        canonical `{"endpoint", "payload"}` JSON. An item that carries `request_json` and
        `request_hash` (as `batch.manifest.EditItem` does) is stored with those, as they are.
        """
        return plan_items(
            self._conn,
            items,
            hasher=hasher,
            redo_changed=redo_changed,
            now=self._clock(),
            run_id=self.run_id,
            conflict_limit=conflict_limit,
            lock=self._lock,
        )

    # --- transitions -----------------------------------------------------------------------

    def _update(
        self,
        conn: sqlite3.Connection,
        key: str,
        action: str,
        allowed: Sequence[ItemState],
        assignments: str,
        params: Sequence[Any] = (),
    ) -> None:
        sql = _update_sql(assignments, len(allowed))
        cur = conn.execute(sql, (*params, self._clock(), self.run_id, key, *allowed))
        if cur.rowcount == 0:
            row = conn.execute("SELECT state FROM items WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise UnknownItemError(key)
            raise InvalidTransitionError(key, row[0], action)

    def mark_submitted(
        self,
        key: str,
        request_id: str,
        status_url: str | None,
        response_url: str | None,
        cancel_url: str | None,
        *,
        possible_duplicate: bool = False,
    ) -> None:
        """pending → submitted, attempts + 1. Commit this before awaiting anything else."""
        with self._tx() as conn:
            self._update(
                conn,
                key,
                "mark it submitted",
                (_P,),
                "state = 'submitted', attempts = attempts + 1, request_id = ?, status_url = ?,"
                " response_url = ?, cancel_url = ?, possible_duplicate = possible_duplicate OR ?,"
                " not_before = NULL, submitted_at = ?, submit_started_at = NULL",
                (
                    request_id,
                    status_url,
                    response_url,
                    cancel_url,
                    possible_duplicate,
                    self._clock(),
                ),
            )

    def mark_completed(
        self,
        key: str,
        outputs: Sequence[OutputRecord],
        *,
        seed: int | None,
        timings: Mapping[str, Any] | None,
        nsfw: Sequence[bool] | None,
    ) -> None:
        """submitted → completed, with its output records, in one transaction. Call it only
        when every file is on disk (written, fsynced, renamed)."""
        indexes = [o.index for o in outputs]
        if len(set(indexes)) != len(indexes):
            raise ValueError(f"duplicate output index for item {key!r}: {indexes}")
        for out in outputs:
            check_output_path(out.path)  # ValueError for absolute or `..` paths
        rows = [
            (key, o.index, o.path, o.url, o.bytes, o.sha256, o.width, o.height, o.content_type)
            for o in outputs
        ]
        with self._tx() as conn:
            self._update(
                conn,
                key,
                "mark it completed",
                (_S,),
                "state = 'completed', seed = ?, timings = ?, nsfw = ?, completed_at = ?,"
                " error_kind = NULL, error_message = NULL, not_before = NULL",
                (
                    seed,
                    None if timings is None else canonical_json(dict(timings)),
                    None if nsfw is None else json.dumps([bool(x) for x in nsfw]),
                    self._clock(),
                ),
            )
            conn.execute("DELETE FROM outputs WHERE item_key = ?", (key,))
            conn.executemany(
                "INSERT INTO outputs (item_key, idx, path, url, bytes, sha256, width, height,"
                " content_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            crashpoint("ledger")  # inside the transaction: a crash here must roll it back

    def mark_failed(self, key: str, kind: str, message: str) -> None:
        """pending/submitted → failed for good (until `reset_to_pending`); request_id kept."""
        with self._tx() as conn:
            self._update(
                conn,
                key,
                "mark it failed",
                (_P, _S),
                f"state = 'failed', {_COUNT_UNSUBMITTED_TRY}, error_kind = ?, error_message = ?,"
                " not_before = NULL, submit_started_at = NULL",
                (kind, message),
            )

    def mark_retry(self, key: str, kind: str, message: str, not_before: float | None) -> None:
        """pending/submitted → pending, not before `not_before` (epoch seconds). The request
        id and URLs are cleared: the next try is a new submit."""
        with self._tx() as conn:
            self._update(
                conn,
                key,
                "retry it",
                (_P, _S),
                f"state = 'pending', {_COUNT_UNSUBMITTED_TRY}, error_kind = ?, error_message = ?,"
                " not_before = ?, request_id = NULL, status_url = NULL, response_url = NULL,"
                " cancel_url = NULL, submit_started_at = NULL",
                (kind, message, not_before),
            )

    def mark_submitting(self, key: str, sending: bool = True) -> None:
        """Record (or clear) that a submit of this pending item is on its way to fal. A run
        that dies before `mark_submitted` leaves it set: the next run treats the item as a
        possible duplicate instead of assuming fal never saw it."""
        with self._tx() as conn:
            self._update(
                conn,
                key,
                "record a submit",
                (_P,),
                "submit_started_at = ?",
                (self._clock() if sending else None,),
            )

    def mark_ambiguous(self, key: str) -> None:
        """Flag that a submit of this item may have been queued without us knowing."""
        with self._tx() as conn:
            self._update(conn, key, "flag a possible duplicate", (_P, _S), "possible_duplicate = 1")

    def reset_to_pending(
        self,
        keys: Iterable[str] | None = None,
        *,
        kind: str | None = None,
        reattach_kinds: Iterable[str] = REATTACH_KINDS,
    ) -> int:
        """Failed items get another go, for `retry`: the given keys, or all failed items (of
        one error kind, if given), with attempts reset and the error cleared. Returns how many.

        An item that failed with a kind in `reattach_kinds` (by default `download`: fal's
        request succeeded, only fetching its images failed) and still has its request id goes
        back to `submitted`, so the run re-attaches to the paid-for request instead of
        submitting again; every other item goes back to `pending` without a request id.
        """
        kinds = sorted(set(reattach_kinds))
        where = "state = 'failed'"
        filters: list[Any] = []
        if kind is not None:
            where += " AND error_kind = ?"
            filters.append(kind)
        if keys is None:
            with self._tx() as conn:
                return self._reset(conn, where, filters, kinds)
        total = 0
        for part in chunked(keys, LOOKUP):
            marks = ", ".join("?" * len(part))
            with self._tx() as conn:
                total += self._reset(
                    conn, f"{where} AND key IN ({marks})", [*filters, *part], kinds
                )
        return total

    def _reset(
        self, conn: sqlite3.Connection, where: str, filters: list[Any], kinds: list[str]
    ) -> int:
        common = (
            "attempts = 0, error_kind = NULL, error_message = NULL, not_before = NULL,"
            " updated_at = ?, run_id = COALESCE(?, run_id)"
        )
        stamp = [self._clock(), self.run_id]
        marks = ", ".join("?" * len(kinds))
        reattach = f"request_id IS NOT NULL AND error_kind IN ({marks})"
        count = conn.execute(
            f"UPDATE items SET state = 'submitted', {common} WHERE {where} AND {reattach}",
            [*stamp, *filters, *kinds],
        ).rowcount
        count += conn.execute(
            f"UPDATE items SET state = 'pending', {common}, request_id = NULL, status_url = NULL,"
            f" response_url = NULL, cancel_url = NULL WHERE {where}",
            [*stamp, *filters],
        ).rowcount
        return count

    # --- exports ---------------------------------------------------------------------------

    def export(self, output_dir: Path | None = None) -> ExportPaths:
        """Write results.csv and results.jsonl (to the ledger's folder by default), atomically
        and streaming, from one consistent snapshot read through a separate connection."""
        return export_results(self.path, self.output_dir if output_dir is None else output_dir)
