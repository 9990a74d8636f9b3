"""What lets a shard survive losing its disk: ledger snapshots and the submit journal.

The ledger stays on local disk (SQLite over a network filesystem is unsafe). It is copied to
the store with SQLite's online backup API, which gives a consistent image while a writer keeps
going, and restored by downloading to a temporary file and renaming it into place.

The journal closes the gap between two snapshots: before each batch of submits the runner
announces the keys it is about to send in one create-only segment, `journal/000001.jsonl`,
`000002.jsonl`, … A pod that comes back without its disk restores the last snapshot and
treats every announced key the snapshot has no request id for as possibly sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from batch.remote.errors import MissingObjectError, StoreError
from batch.remote.store import Store

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SEGMENT = re.compile(r"(\d{6,})\.jsonl")
# at most this many segments are fetched at once by `announced()`
_READ_CONCURRENCY = 16
# create-only collisions tolerated before giving up (each means another writer appended)
_ANNOUNCE_ATTEMPTS = 3


def _backup(db_path: Path, dest: Path) -> None:
    # A plain connection that only reads. Not `mode=ro`: a read-only connection to a WAL
    # database that nobody else has open leaves empty -wal and -shm files behind.
    src = sqlite3.connect(db_path)
    try:
        dst = sqlite3.connect(dest)
        try:
            # pages=-1 copies everything in one step under one read transaction: a writer
            # committing meanwhile cannot make the copy restart or mix two states. A busy
            # source (a rollback-journal writer mid-commit) is retried every 5 ms, not 250.
            src.backup(dst, pages=-1, sleep=0.005)
        finally:
            dst.close()
    finally:
        src.close()


async def snapshot_sqlite(db_path: str | os.PathLike[str], store: Store, key: str) -> int:
    """Upload a consistent copy of the live SQLite database at `db_path`; its size in bytes."""
    db = Path(db_path)
    if not db.is_file():
        raise StoreError(f"snapshot {db}: no such database")
    # the temporary copy sits beside the ledger: same disk, and /tmp may be small in a pod
    with tempfile.TemporaryDirectory(dir=db.parent, prefix=".snapshot-") as tmp:
        copy = Path(tmp) / db.name
        try:
            await asyncio.to_thread(_backup, db, copy)
        except sqlite3.Error as exc:
            raise StoreError(f"snapshot {db}: SQLite backup failed: {exc}") from None
        await store.put_file(key, copy)
        return copy.stat().st_size


async def restore_sqlite(store: Store, key: str, db_path: str | os.PathLike[str]) -> bool:
    """Replace the database at `db_path` with the snapshot at `key`; False if there is none.

    Call it before anything opens the database.
    """
    db = Path(db_path)
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.restore")
    try:
        await store.get_file(key, tmp)
    except MissingObjectError:
        return False
    try:
        with tmp.open("rb") as f:
            if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                raise StoreError(f"restore {store.url(key)}: not an SQLite database")
        # A leftover WAL or rollback journal belongs to the old file; SQLite would replay it
        # into the restored one and corrupt it.
        for suffix in ("-wal", "-shm", "-journal"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)
    return True


class Announced(NamedTuple):
    """A journal's last word on a key: when it was announced, and the payload it carried
    (None: the item's own request)."""

    at: float
    payload: Any


class Journal:
    """Create-only segments under `prefix` listing keys about to be submitted."""

    def __init__(
        self, store: Store, prefix: str = "journal/", *, now: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._now = now
        self._next: int | None = None  # the next segment's number, once listed

    def __repr__(self) -> str:
        return f"Journal({self.store.url(self.prefix)!r}, next={self._next})"

    async def segments(self) -> list[str]:
        """The segments' keys, in order."""
        numbered = []
        for key in await self.store.list(self.prefix):
            match = _SEGMENT.fullmatch(key.removeprefix(self.prefix))
            if match:
                numbered.append((int(match.group(1)), key))
        return [key for _, key in sorted(numbered)]

    async def _last_number(self) -> int:
        segments = await self.segments()
        name = segments[-1].removeprefix(self.prefix) if segments else "0.jsonl"
        return int(name.partition(".")[0])

    async def announce(
        self, keys: Iterable[str], payloads: Mapping[str, Any] | None = None
    ) -> str | None:
        """Write the next segment, one line per key (with its payload from `payloads`, if
        any); its store key (None if `keys` is empty)."""
        at, payloads = self._now(), payloads or {}
        lines = []
        for key in keys:
            entry: dict[str, Any] = {"key": key, "at": at}
            if payloads.get(key) is not None:
                entry["payload"] = payloads[key]
            lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
        body = "".join(lines).encode()
        if not body:
            return None
        if self._next is None:
            self._next = await self._last_number() + 1  # listed once, then counted here
        for _ in range(_ANNOUNCE_ATTEMPTS):
            key = f"{self.prefix}{self._next:06d}.jsonl"
            if await self.store.create(key, body) is not None:
                self._next += 1
                return key
            # taken: another writer appended (the lease should prevent it); skip past it
            self._next = await self._last_number() + 1
        raise StoreError(f"journal {self.store.url(self.prefix)}: other writers keep appending")

    async def announced(self) -> set[str]:
        """Every key any segment lists."""
        return set(await self.entries())

    async def announced_at(self) -> dict[str, float]:
        """Every key any segment lists, with when it was last announced."""
        return {key: entry.at for key, entry in (await self.entries()).items()}

    async def entries(self) -> dict[str, Announced]:
        """Every key any segment lists: when it was last announced, and with what payload."""
        limit = asyncio.Semaphore(_READ_CONCURRENCY)

        async def read(key: str) -> bytes:
            async with limit:
                return await self.store.get(key)

        segments = await self.segments()
        keys: dict[str, Announced] = {}
        for key, data in zip(segments, await asyncio.gather(*map(read, segments)), strict=True):
            try:
                for line in data.splitlines():
                    if line:
                        entry = json.loads(line)
                        at = float(entry["at"])
                        keys[str(entry["key"])] = Announced(at, entry.get("payload"))
            except (ValueError, KeyError, TypeError):
                raise StoreError(f"journal {self.store.url(key)}: unreadable segment") from None
        return keys
