"""Ledger snapshots (SQLite backup API) and the submit journal, on memory and a local folder."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from batch.remote import Journal, Store, StoreError, restore_sqlite, snapshot_sqlite

if TYPE_CHECKING:
    from remote.conftest import Clock

pytest.importorskip("obstore")


def make_db(path: Path, mode: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA journal_mode={mode}")
        db.execute("CREATE TABLE items (key TEXT PRIMARY KEY, n INTEGER, blob BLOB)")
    db.close()


def count(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # every transaction writes a pair of rows: a torn copy would show an odd count
        return int(db.execute("SELECT count(*) FROM items").fetchone()[0])
    finally:
        db.close()


async def test_snapshot_of_a_live_db_restores_consistent(store: Store, tmp_path: Path) -> None:
    """A writer commits pairs of rows throughout (WAL, as the ledger); the copy is whole."""
    db_path = tmp_path / "ledger.sqlite"
    make_db(db_path, "wal")
    stop = threading.Event()
    first_commits = threading.Event()

    def writer() -> None:
        db = sqlite3.connect(db_path, timeout=30)
        n = 0
        while not stop.is_set():
            with db:
                for half in (0, 1):
                    db.execute(
                        "INSERT INTO items VALUES (?, ?, ?)", (f"k{n}-{half}", n, b"x" * 900)
                    )
            n += 1
            if n == 50:
                first_commits.set()
        db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert first_commits.wait(timeout=20)
        sizes = [await snapshot_sqlite(db_path, store, "ledger.sqlite") for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    assert all(size > 0 for size in sizes)
    restored = tmp_path / "restored" / "ledger.sqlite"
    assert await restore_sqlite(store, "ledger.sqlite", restored)
    rows = count(restored)
    assert rows >= 100 and rows % 2 == 0
    assert rows <= count(db_path)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".snapshot")]
    assert leftovers == []


@pytest.mark.parametrize("mode", ["wal", "delete"])
async def test_snapshot_leaves_out_an_open_transaction(
    store: Store, tmp_path: Path, mode: str
) -> None:
    """Committed rows are in the copy, a writer's uncommitted ones are not, in either mode."""
    db_path = tmp_path / "ledger.sqlite"
    make_db(db_path, mode)
    writer = sqlite3.connect(db_path, isolation_level=None)
    try:
        writer.execute("INSERT INTO items VALUES ('done-0', 1, NULL), ('done-1', 1, NULL)")
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO items VALUES ('open-0', 2, NULL), ('open-1', 2, NULL)")
        await snapshot_sqlite(db_path, store, "ledger.sqlite")
        writer.execute("COMMIT")
    finally:
        writer.close()
    restored = tmp_path / "restored.sqlite"
    assert await restore_sqlite(store, "ledger.sqlite", restored)
    assert count(restored) == 2
    assert count(db_path) == 4


async def test_restore_of_absent_snapshot_is_false_and_touches_nothing(
    store: Store, tmp_path: Path
) -> None:
    work = tmp_path / "work"  # the local store lives in tmp_path/job
    assert not await restore_sqlite(store, "ledger.sqlite", work / "ledger.sqlite")
    assert list(work.iterdir()) == []


async def test_restore_replaces_db_and_drops_stale_wal(store: Store, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    src = work / "src.sqlite"
    make_db(src, "delete")
    with sqlite3.connect(src) as db:
        db.execute("INSERT INTO items VALUES ('a', 1, NULL)")
    db.close()
    await snapshot_sqlite(src, store, "snap/ledger.sqlite")
    dest = work / "ledger.sqlite"
    dest.write_bytes(b"old")
    (work / "ledger.sqlite-wal").write_bytes(b"stale wal")
    (work / "ledger.sqlite-shm").write_bytes(b"stale shm")
    assert await restore_sqlite(store, "snap/ledger.sqlite", dest)
    assert count(dest) == 1
    assert sorted(p.name for p in work.iterdir()) == ["ledger.sqlite", "src.sqlite"]


async def test_restore_refuses_an_object_that_is_not_sqlite(store: Store, tmp_path: Path) -> None:
    await store.put("ledger.sqlite", b"<html>not a database</html>")
    work = tmp_path / "work"
    with pytest.raises(StoreError, match="not an SQLite database"):
        await restore_sqlite(store, "ledger.sqlite", work / "ledger.sqlite")
    assert list(work.iterdir()) == []


async def test_snapshot_of_missing_db_is_an_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such database"):
        await snapshot_sqlite(tmp_path / "none.sqlite", store, "x")
    assert not (tmp_path / "none.sqlite").exists()  # never created by the attempt


async def test_journal_segments_number_on_across_reopen(store: Store, clock: Clock) -> None:
    journal = Journal(store, now=clock)
    assert await journal.announce(["a", "b"]) == "journal/000001.jsonl"
    assert await journal.announce(["c"]) == "journal/000002.jsonl"
    reopened = Journal(store, "journal", now=clock)  # a new process: lists once, goes on
    assert await reopened.announce(["d"]) == "journal/000003.jsonl"
    assert await reopened.announced() == {"a", "b", "c", "d"}
    assert await journal.segments() == [f"journal/00000{i}.jsonl" for i in (1, 2, 3)]


async def test_journal_lines_carry_key_and_time(store: Store, clock: Clock) -> None:
    journal = Journal(store, now=clock)
    key = await journal.announce(["x/1", "x/2"])
    assert key is not None
    lines = (await store.get(key)).decode().splitlines()
    assert lines == [
        f'{{"key": "x/1", "at": {clock()}}}',
        f'{{"key": "x/2", "at": {clock()}}}',
    ]


async def test_journal_announce_of_nothing_writes_nothing(store: Store) -> None:
    journal = Journal(store)
    assert await journal.announce([]) is None
    assert await store.list() == []


async def test_journal_skips_a_segment_another_writer_took(store: Store) -> None:
    journal = Journal(store)
    await journal.announce(["a"])
    await store.put("journal/000002.jsonl", b'{"key": "intruder", "at": 0}\n')
    assert await journal.announce(["b"]) == "journal/000003.jsonl"  # create-only: no overwrite
    assert await journal.announced() == {"a", "b", "intruder"}


async def test_journal_ignores_other_objects_and_orders_numerically(store: Store) -> None:
    await store.put("journal/notes.txt", b"hello")
    await store.put("journal/1000000.jsonl", b'{"key": "late", "at": 0}\n')
    await store.put("journal/000009.jsonl", b'{"key": "early", "at": 0}\n')
    journal = Journal(store)
    assert await journal.segments() == ["journal/000009.jsonl", "journal/1000000.jsonl"]
    assert await journal.announce(["next"]) == "journal/1000001.jsonl"


async def test_journal_unreadable_segment_is_an_error(store: Store) -> None:
    await store.put("journal/000001.jsonl", b"{broken\n")
    with pytest.raises(StoreError, match=r"journal .*000001\.jsonl: unreadable segment"):
        await Journal(store).announced()
