"""`salvage(output_dir)`: what a damaged ledger still holds, copied into a new one.

`firered-batch doctor JOB --recover` calls it, holding the folder's run lock. The damaged files
(the ledger, its -wal and -shm) are moved into `<output>/damaged-<UTC time>/` — kept, never
deleted — a new ledger is made with every migration, and each table's rows that can still be
read are copied into it, a range of rowids at a time; a range that cannot be read is tried row
by row, so a damaged page loses only its own rows. Works without the `sqlite3` command line
(whose `.recover` needs a build with the `sqlite_dbpage` table).

Items whose rows were lost are not in the new ledger: a later run sends them again, and their
image files (which `doctor` then lists as not recorded) are written again. When not one item can
be read, nothing is changed: the damaged files go back where they were.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from batch.ledger.faults import LedgerDamagedError
from batch.ledger.migrations import migrate
from batch.outputs.faults import host_faults
from batch.outputs.presence import JOURNALS, LEDGER_NAME, check_ledger_present

# Not `meta`: it holds only what a run learns again (the kept price, a locked account) and the
# fingerprint of the manifest last planned, which must go: the next run then plans the whole
# manifest again and finds the items whose rows were lost.
TABLES = ("items", "outputs", "runs", "local_files", "uploads", "requests", "reviews")
CHUNK = 256  # rowids read at once
MAX_SPAN = 50_000_000  # rowids walked at most; beyond, a table is read in order to its damage


@dataclass
class Salvaged:
    """What `salvage` copied (rows by table), whether rows were unreadable, where the damaged
    files are kept."""

    kept: Path
    copied: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)  # -1: the whole table
    unrecorded: int = 0  # completed items whose output records were lost: failed `download`

    def text(self) -> str:
        rows = ", ".join(f"{n} {table}" for table, n in self.copied.items() if n)
        lost = ", ".join(
            f"{table} ({'all' if n < 0 else n})" for table, n in self.unreadable.items() if n
        )
        text = f"recovered into a new ledger: {rows or 'nothing'}"
        text += f"; rows that could not be read: {lost}" if lost else "; every row was read"
        if self.unreadable.get("items"):
            text += (
                "; items whose rows could not be read are not in the ledger now: a run sends"
                " them again (and pays for them again)"
            )
        if self.unrecorded:
            text += (
                f"; {self.unrecorded} completed items lost their output records: they are"
                " failed `download` now, and `firered-batch retry JOB --kind download` fetches"
                " their results again (their requests are not sent again)"
            )
        return text + f"; the damaged files are kept in {self.kept}"


def salvage(output_dir: Path, *, now: datetime.datetime | None = None) -> Salvaged | None:
    """Replace the folder's damaged ledger by a new one holding every row still readable;
    None (nothing done) when SQLite finds nothing wrong with it."""
    check_ledger_present(output_dir, create=False)
    path = output_dir / LEDGER_NAME
    if _sound(path):
        return None
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
    with host_faults(output_dir):
        kept = _new_folder(output_dir, f"damaged-{stamp}")
        moved = [
            name
            for name in (LEDGER_NAME, *(LEDGER_NAME + s for s in JOURNALS))
            if (output_dir / name).exists()
        ]
        for name in moved:
            os.rename(output_dir / name, kept / name)
    result = Salvaged(kept)
    try:
        _copy_all(kept / LEDGER_NAME, path, result)
    except BaseException:
        _put_back(output_dir, kept, moved)
        raise
    if not result.copied.get("items"):
        _put_back(output_dir, kept, moved)
        raise LedgerDamagedError(path, "not one item could be read from it")
    return result


def _sound(path: Path) -> bool:
    try:
        conn = _open_damaged(path)
    except sqlite3.DatabaseError:
        return False
    try:
        return [row[0] for row in conn.execute("PRAGMA quick_check")] == ["ok"]
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def _new_folder(parent: Path, name: str) -> Path:
    for n in range(1, 100):
        folder = parent / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(folder)


def _put_back(output_dir: Path, kept: Path, moved: list[str]) -> None:
    """Undo: remove the new ledger (made here, holding nothing that was not in the old one)
    and put the damaged files back."""
    for name in (LEDGER_NAME, *(LEDGER_NAME + s for s in JOURNALS)):
        (output_dir / name).unlink(missing_ok=True)
    for name in moved:
        os.rename(kept / name, output_dir / name)
    (kept / (LEDGER_NAME + ".whole-pages")).unlink(missing_ok=True)  # made here, see below
    kept.rmdir()


def _copy_all(damaged: Path, path: Path, result: Salvaged) -> None:
    try:
        old = _open_damaged(_whole_pages(damaged))
    except sqlite3.DatabaseError:
        return  # not even its first page: nothing to copy
    new = sqlite3.connect(path, isolation_level=None)
    try:
        new.execute("PRAGMA journal_mode = WAL")
        migrate(new)
        new.execute("BEGIN IMMEDIATE")
        for table in TABLES:
            columns = _shared_columns(old, new, table)
            if columns:
                _copy(old, new, table, columns, result)
            else:
                result.unreadable[table] = -1  # the table itself could not be read
        if result.unreadable.get("outputs"):
            result.unrecorded = _unrecorded(new, result.kept)
        new.execute("COMMIT")
    finally:
        new.close()
        old.close()


_MAGIC = b"SQLite format 3\x00"


def _whole_pages(path: Path) -> Path:
    """A truncated ledger as SQLite can read what is left of it: a copy beside it
    (`<name>.whole-pages`) cut to whole pages, its header's page count made to match (SQLite
    refuses every read of a file shorter than its header says). Any other file as it is."""
    data = path.read_bytes()
    if len(data) < 100 or not data.startswith(_MAGIC):
        return path
    page = int.from_bytes(data[16:18], "big")
    page = 65536 if page == 1 else page
    pages = len(data) // page if page else 0
    if not pages or (len(data) % page == 0 and int.from_bytes(data[28:32], "big") <= pages):
        return path
    copy = path.with_name(path.name + ".whole-pages")
    fixed = bytearray(data[: pages * page])
    fixed[28:32] = pages.to_bytes(4, "big")
    copy.write_bytes(bytes(fixed))
    return copy


def _unrecorded(new: sqlite3.Connection, kept: Path) -> int:
    """Completed items left without any output record (theirs were unreadable) become failed
    `download` items: `retry --kind download` re-attaches to their paid request."""
    message = f"output records lost with a damaged ledger (kept in {kept}); retry --kind download"
    return new.execute(
        "UPDATE items SET state = 'failed', error_kind = 'download', error_message = ?"
        " WHERE state = 'completed' AND request_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM outputs WHERE outputs.item_key = items.key)",
        (message,),
    ).rowcount


def _open_damaged(path: Path) -> sqlite3.Connection:
    uri = path.resolve().as_uri()
    wal = path.with_name(path.name + "-wal").exists()
    conn = sqlite3.connect(f"{uri}?{'mode=ro' if wal else 'immutable=1'}", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return conn


def _shared_columns(old: sqlite3.Connection, new: sqlite3.Connection, table: str) -> list[str]:
    try:
        had = {row[1] for row in old.execute(f"PRAGMA table_info({table})")}
    except sqlite3.DatabaseError:
        return []
    return [row[1] for row in new.execute(f"PRAGMA table_info({table})") if row[1] in had]


def _copy(
    old: sqlite3.Connection,
    new: sqlite3.Connection,
    table: str,
    columns: list[str],
    result: Salvaged,
) -> None:
    names = ", ".join(columns)
    insert = (
        f"INSERT OR IGNORE INTO {table} (rowid, {names})"
        f" VALUES ({', '.join('?' * (len(columns) + 1))})"
    )
    select = f"SELECT rowid, {names} FROM {table}"
    copied = unreadable = 0
    for row in _readable(old, select, table):
        if row is None:
            unreadable += 1
            continue
        try:
            new.execute(insert, row)
        except sqlite3.Error:  # a value the schema refuses (damage read as data)
            unreadable += 1
            continue
        copied += 1
    result.copied[table] = copied
    result.unreadable[table] = unreadable


def _readable(
    old: sqlite3.Connection, select: str, table: str
) -> Iterator[tuple[object, ...] | None]:
    """The table's rows that can be read (None for each rowid that cannot)."""
    try:
        low, high = old.execute(f"SELECT min(rowid), max(rowid) FROM {table}").fetchone()
    except sqlite3.DatabaseError:
        low = high = None
    if low is None or high is None or high - low > MAX_SPAN:
        yield from _in_order(old, select)
        return
    for start in range(low, high + 1, CHUNK):
        end = min(start + CHUNK - 1, high)
        try:
            rows = old.execute(f"{select} WHERE rowid BETWEEN ? AND ?", (start, end)).fetchall()
        except sqlite3.DatabaseError:
            yield from _one_by_one(old, select, start, end)
        else:
            yield from rows


def _one_by_one(
    old: sqlite3.Connection, select: str, start: int, end: int
) -> Iterator[tuple[object, ...] | None]:
    for rowid in range(start, end + 1):
        try:
            yield from old.execute(f"{select} WHERE rowid = ?", (rowid,)).fetchall()
        except sqlite3.DatabaseError:
            yield None


def _in_order(old: sqlite3.Connection, select: str) -> Iterator[tuple[object, ...] | None]:
    """Rows in rowid order up to the first damage (the range of rowids is not known)."""
    try:
        yield from old.execute(f"{select} ORDER BY rowid")
    except sqlite3.DatabaseError:
        yield None
