"""Named schema migrations, applied in order, each in its own transaction with its record.

In the manner of sqlite-utils' migrations: a migration is a function decorated with
`@migration`, named `mNNN_what`; `migrate()` applies those not yet recorded in the `migrations`
table. Never edit one that has shipped: add the next. A later table is one more function:

    @migration
    def m002_uploads(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE uploads (...)")
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]

MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    """Register `fn` as the next migration, under its function name."""
    name = fn.__name__
    if any(existing == name for existing, _ in MIGRATIONS):
        raise ValueError(f"duplicate migration name {name!r}")
    MIGRATIONS.append((name, fn))
    return fn


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names of the applied migrations, in the order they were applied."""
    rows = conn.execute("SELECT name FROM migrations ORDER BY applied_at, rowid").fetchall()
    return [row[0] for row in rows]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the pending migrations; return the names applied now. `conn` is in autocommit
    mode (isolation_level=None). Safe against another process migrating at the same time."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done: list[str] = []
    for name, fn in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM migrations WHERE name = ?", (name,)).fetchone():
                conn.execute("COMMIT")
                continue
            fn(conn)
            conn.execute(
                "INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time())
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        done.append(name)
    return done


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE items (
            key TEXT PRIMARY KEY,
            source TEXT NOT NULL DEFAULT '',
            endpoint TEXT NOT NULL,
            request TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'submitted', 'completed', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            request_id TEXT,
            status_url TEXT,
            response_url TEXT,
            cancel_url TEXT,
            possible_duplicate INTEGER NOT NULL DEFAULT 0,
            not_before REAL,
            error_kind TEXT,
            error_message TEXT,
            seed INTEGER,
            timings TEXT,
            nsfw TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            submitted_at REAL,
            completed_at REAL,
            run_id INTEGER,
            in_manifest INTEGER NOT NULL DEFAULT 1
        )
        """
    )
    conn.execute("CREATE INDEX items_state ON items (state)")
    # Keyset pagination of the work queue (iter_work) walks only unfinished rows.
    conn.execute("CREATE INDEX items_work ON items (key) WHERE state IN ('pending', 'submitted')")
    conn.execute(
        """
        CREATE TABLE outputs (
            item_key TEXT NOT NULL REFERENCES items (key) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            path TEXT NOT NULL,
            url TEXT,
            bytes INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            width INTEGER,
            height INTEGER,
            content_type TEXT,
            PRIMARY KEY (item_key, idx)
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at REAL NOT NULL,
            ended_at REAL,
            settings TEXT NOT NULL,
            counts TEXT,
            exit_code INTEGER
        )
        """
    )


@migration
def m002_submit_intent(conn: sqlite3.Connection) -> None:
    """When a submit was sent and not yet answered: a run that dies in that window leaves it
    set, and the next run knows the item may already be queued at fal."""
    conn.execute("ALTER TABLE items ADD COLUMN submit_started_at REAL")


@migration
def m003_meta(conn: sqlite3.Connection) -> None:
    """Facts about the ledger as a whole, e.g. the fingerprint of the last manifest planned."""
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migration
def m004_uploads(conn: sqlite3.Connection) -> None:
    """Local input images: what each file was when last read (so an unchanged file is not read
    again, and its bytes can be found by sha256), and the upload cache: (sha256, the storage API
    it went to) → its URL and upload time."""
    conn.execute(
        """
        CREATE TABLE local_files (
            path TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            ctime_ns INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            seen_at REAL NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX local_files_sha256 ON local_files (sha256)")
    conn.execute(
        """
        CREATE TABLE uploads (
            sha256 TEXT NOT NULL,
            storage TEXT NOT NULL,
            url TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            uploaded_at REAL NOT NULL,
            PRIMARY KEY (sha256, storage)
        )
        """
    )


@migration
def m005_request_id_index(conn: sqlite3.Connection) -> None:
    """Find an item by fal's request id: what a webhook names (`Ledger.find_request`)."""
    conn.execute("CREATE INDEX items_request_id ON items (request_id) WHERE request_id IS NOT NULL")


@migration
def m006_fal_details(conn: sqlite3.Connection) -> None:
    """What fal says beyond success or failure: the error type of a failed answer
    (`X-Fal-Error-Type` / `error_type`), and the billable units of a result
    (`X-Fal-Billable-Units`), from which spend is counted where present."""
    conn.execute("ALTER TABLE items ADD COLUMN error_type TEXT")
    conn.execute("ALTER TABLE items ADD COLUMN billable_units REAL")


@migration
def m007_sent_requests(conn: sqlite3.Connection) -> None:
    """What a submit on its way carried (`sent_payload`, with `submit_started_at` its send
    time), so that a submit whose answer was lost can be found in fal's request history; the
    items re-attached that way (`recovered`); and every request id fal ever gave an item of this
    ledger (`requests`), so that history entries already ours are never claimed twice."""
    conn.execute("ALTER TABLE items ADD COLUMN sent_payload TEXT")
    conn.execute("ALTER TABLE items ADD COLUMN recovered INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        """
        CREATE TABLE requests (
            request_id TEXT PRIMARY KEY,
            item_key TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            submitted_at REAL NOT NULL
        )
        """
    )
    conn.execute(
        "INSERT OR IGNORE INTO requests (request_id, item_key, endpoint, submitted_at)"
        " SELECT request_id, key, endpoint, coalesce(submitted_at, updated_at) FROM items"
        " WHERE request_id IS NOT NULL"
    )


@migration
def m008_reviews(conn: sqlite3.Connection) -> None:
    """People's verdicts on output images (`batch.ledger.reviews`), append-only: every write
    (a decision, a note, an undo) is a new row of its output (item key, output index) with the
    next `version`, and the output's latest version is the review in force. `sha256` is the
    output the decision is about: an item redone since has a new output, which is unreviewed.
    One table and its unique index, compact: the schema stays small."""
    conn.execute(
        "CREATE TABLE reviews (id INTEGER PRIMARY KEY AUTOINCREMENT, item_key TEXT NOT NULL,"
        " idx INTEGER NOT NULL, version INTEGER NOT NULL,"
        " action TEXT NOT NULL CHECK (action IN ('decide', 'note', 'undo')),"
        " actor TEXT NOT NULL, at REAL NOT NULL, undoes INTEGER,"
        " decision TEXT CHECK (decision IN ('approved', 'rejected')),"
        " note TEXT NOT NULL DEFAULT '', reviewer TEXT, decided_at REAL, sha256 TEXT,"
        " UNIQUE (item_key, idx, version))"
    )


@migration
def m009_pilot_and_redo(conn: sqlite3.Connection) -> None:
    """`pilot`: the item was in a pilot run's sample (`run --sample`); `redo_of`: the key of the
    rejected item this one redoes (`retry --rejected`), whose outputs stay as they are."""
    conn.execute("ALTER TABLE items ADD COLUMN pilot INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE items ADD COLUMN redo_of TEXT")


@migration
def m010_redo_index(conn: sqlite3.Connection) -> None:
    """Redos are looked up by the item they redo (`retry --rejected`, the report)."""
    conn.execute("CREATE INDEX items_redo_of ON items (redo_of) WHERE redo_of IS NOT NULL")
