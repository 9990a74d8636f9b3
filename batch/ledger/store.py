"""`Ledger`: the SQLite state of every item, one short transaction per change.

The ledger stores only what its callers hand it: requests (the endpoint's payload), fal's
request ids and URLs, error kinds and messages, output records, and run settings. It never
reads the environment or a key. Callers must not pass secrets in; as a second guard, run
settings whose names look like credentials (`api_key`, `token`, `secret`, `password`, …) are
stored as "<redacted>" (DESIGN invariant 6).

Opening refuses a ledger that is damaged (`LedgerDamagedError`) or cannot be written
(`NotWritableError`); a full disk is `DiskFullError` (`batch.ledger.faults`). With
`create=False` a folder without a ledger is refused too (`LedgerMissingError`); a run is refused
a folder whose ledger is gone beside an earlier run's outputs by `run_lock`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Literal

from batch.ledger.checkpoint import INTERVAL as CHECKPOINT_INTERVAL
from batch.ledger.checkpoint import Checkpointer, background_checkpoints
from batch.ledger.export import ExportPaths, export_results
from batch.ledger.faults import LEDGER_NAME, check_ledger_present, check_writable, ledger_faults
from batch.ledger.migrations import applied_migrations, migrate
from batch.ledger.models import ItemLike, PlanResult
from batch.ledger.plan import Hasher, plan_items
from batch.ledger.reads import LedgerReads
from batch.ledger.reviews import Reviews
from batch.ledger.runs import LedgerRuns
from batch.ledger.transitions import REATTACH_KINDS as REATTACH_KINDS
from batch.ledger.transitions import LedgerTransitions
from batch.ledger.tx import transaction
from batch.ledger.uploads import UploadCache
from batch.outputs.faults import host_faults

LEDGER_FILE = LEDGER_NAME


class Ledger(LedgerTransitions, LedgerReads, LedgerRuns):
    """The results ledger of one output folder (`<output>/ledger.sqlite`).

    Every method is one short transaction (or a few, for `reset_to_pending`; `plan` is one long
    one, made before the run), so it may be called straight from the event loop. The
    connection may be used from another thread (`asyncio.to_thread(ledger.plan, items)`);
    calls are serialised by a lock. `export` reads through its own connection, so it can run in
    a thread while the loop keeps writing. Here: opening, planning and exports; the
    transitions come from `LedgerTransitions` (transitions.py), the read-only queries from
    `LedgerReads` (reads.py), runs and meta from `LedgerRuns` (runs.py).
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
        create: bool = True,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> Ledger:
        """Open (creating the folder and database if needed) and migrate the ledger.

        WAL mode; `synchronous="NORMAL"` survives a process crash, `"FULL"` a power loss too.

        `create=False`: a ledger must be there — `LedgerMissingError` (before anything is
        written) when it is missing or empty. (A run checks more, under its lock: `run_lock`
        refuses a folder with an earlier run's outputs and no ledger.) A ledger that cannot be
        written raises `NotWritableError`, a damaged one `LedgerDamagedError`, a full disk
        `DiskFullError`.
        """
        folder = Path(output_dir)
        if not create:
            check_ledger_present(folder, create=False)
        with host_faults(folder, action="create"):
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / LEDGER_FILE
        check_writable(path)
        with ledger_faults(path):
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
        return UploadCache(self._conn, self._lock, self._clock, self.path)

    @property
    def reviews(self) -> Reviews:
        """People's approve / reject / note per output image (`batch.ledger.reviews`)."""
        return Reviews(self._conn, self._lock, self._clock, self.path)

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
        and its UPDATE matched no row); `GroupCommit` runs each in a savepoint of its own, so
        one that raises anything leaves the others' changes in the group."""
        return transaction(self._conn, self._lock, self.path)

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
        with ledger_faults(self.path):
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

    # --- exports ---------------------------------------------------------------------------

    def export(self, output_dir: Path | None = None) -> ExportPaths:
        """Write results.csv and results.jsonl (to the ledger's folder by default), atomically
        and streaming, from one consistent snapshot read through a separate connection."""
        with ledger_faults(self.path):
            return export_results(self.path, self.output_dir if output_dir is None else output_dir)
