"""The ledger's memory of local input images (table `local_files`) and of their uploads
(table `uploads`, the upload cache), both added by migration m004_uploads.

- `local_files`: path → what the file was when last read (size, mtime, ctime, sha256, type,
  pixels). A later run finds an unchanged file here and does not read it again; the pipeline
  finds a file's bytes by its sha256 here.
- `uploads`: (sha256, storage) → the URL fal's storage gave it and when; ``storage`` is the
  storage API's URL, so a URL from one service (a run's embedded simulator) is never offered to
  another. Each distinct content is uploaded once across items and runs, until the entry is
  older than the run's ``upload_max_age``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from batch.ledger.tx import transaction
from batch.manifest.localfiles import LocalFile

_FILE_COLUMNS = "sha256, path, size, mtime_ns, ctime_ns, content_type, width, height"


@dataclass(frozen=True, slots=True)
class Upload:
    """One cached upload: the content's sha256, where it went, its URL, size and time."""

    sha256: str
    storage: str
    url: str
    bytes: int
    uploaded_at: float  # epoch seconds


class UploadCache:
    """Reads and short writes on the two tables, serialised by the ledger's lock."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock: threading.RLock,
        clock: Callable[[], float],
        path: Path | None = None,
    ) -> None:
        self._conn = conn
        self._lock = lock
        self._clock = clock
        self._path = path  # the ledger's file, for messages

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn, self._lock, self._path)

    # --- local files ---------------------------------------------------------------------

    def known_files(self) -> dict[str, LocalFile]:
        """Every recorded file by absolute path, for `LocalFiles(known=...)`."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_FILE_COLUMNS} FROM local_files").fetchall()
        return {row[1]: LocalFile(*row) for row in rows}

    def record_files(self, files: Iterable[LocalFile]) -> int:
        """Insert or update the records of these files (one transaction); returns how many."""
        now = self._clock()
        rows = [
            (
                f.path,
                f.sha256,
                f.size,
                f.mtime_ns,
                f.ctime_ns,
                f.content_type,
                f.width,
                f.height,
                now,
            )
            for f in files
        ]
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO local_files (path, sha256, size, mtime_ns, ctime_ns, content_type,"
                " width, height, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256,"
                " size = excluded.size, mtime_ns = excluded.mtime_ns,"
                " ctime_ns = excluded.ctime_ns, content_type = excluded.content_type,"
                " width = excluded.width, height = excluded.height, seen_at = excluded.seen_at",
                rows,
            )
        return len(rows)

    def file_for(self, sha256: str) -> LocalFile | None:
        """The most recently seen file with this content, or None."""
        sql = (
            f"SELECT {_FILE_COLUMNS} FROM local_files WHERE sha256 = ?"
            " ORDER BY seen_at DESC, path LIMIT 1"
        )
        with self._lock:
            row = self._conn.execute(sql, (sha256,)).fetchone()
        return None if row is None else LocalFile(*row)

    # --- uploads -------------------------------------------------------------------------

    def get(self, sha256: str, storage: str) -> Upload | None:
        sql = (
            "SELECT sha256, storage, url, bytes, uploaded_at FROM uploads"
            " WHERE sha256 = ? AND storage = ?"
        )
        with self._lock:
            row = self._conn.execute(sql, (sha256, storage)).fetchone()
        return None if row is None else Upload(*row)

    def put(self, sha256: str, storage: str, url: str, size: int) -> Upload:
        """Record (or replace) the upload of this content to ``storage``, stamped now."""
        upload = Upload(sha256, storage, url, size, self._clock())
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO uploads (sha256, storage, url, bytes, uploaded_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (sha256, storage) DO UPDATE SET"
                " url = excluded.url, bytes = excluded.bytes, uploaded_at = excluded.uploaded_at",
                (upload.sha256, upload.storage, upload.url, upload.bytes, upload.uploaded_at),
            )
        return upload

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM uploads").fetchone()[0])
