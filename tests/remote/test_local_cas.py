"""The local folder's compare-and-swap fallback (obstore 0.12's LocalStore has none)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from batch.remote import open_store
from batch.remote.local_cas import swap, write_atomic

obstore_store = pytest.importorskip("obstore.store")


async def test_obstore_local_store_still_lacks_etag_updates(tmp_path: Path) -> None:
    """Why local_cas exists: if obstore gains `mode=update` locally, this fails and says so."""
    inner = obstore_store.LocalStore(tmp_path)
    put = await inner.put_async("k", b"1", mode="create")
    with pytest.raises(NotImplementedError):
        await inner.put_async("k", b"2", mode={"e_tag": put["e_tag"]})


async def test_concurrent_swaps_on_one_etag_have_exactly_one_winner(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    etag = await store.create("lease.json", b"v0")
    assert etag is not None
    results = await asyncio.gather(
        *(store.swap("lease.json", f"v{i}".encode(), etag) for i in range(1, 9))
    )
    winners = [i + 1 for i, r in enumerate(results) if r is not None]
    assert len(winners) == 1
    assert await store.get("lease.json") == f"v{winners[0]}".encode()


def test_threads_swapping_in_turn_never_lose_an_update(tmp_path: Path) -> None:
    """Eight threads increment a counter by CAS, retrying on conflict: no increment is lost."""
    inner = obstore_store.LocalStore(tmp_path)
    inner.put("n", b"0")
    file = tmp_path / "n"

    def current() -> str | None:
        try:
            return inner.head("n")["e_tag"]
        except FileNotFoundError:
            return None

    def worker() -> None:
        for _ in range(25):
            while True:
                etag = current()
                assert etag is not None
                value = int(file.read_bytes())
                if swap(file, str(value + 1).encode(), etag, current) is not None:
                    break

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(file.read_bytes()) == 200


async def test_staging_files_are_not_listed(tmp_path: Path) -> None:
    """A half-written swap (name with '#') never shows in `list()`; the object does."""
    store = open_store(str(tmp_path))
    await store.put("j/a", b"1")
    (tmp_path / "j" / "a#12345").write_bytes(b"partial")
    assert await store.list() == ["j/a"]


def test_write_atomic_leaves_no_temp_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "missing-folder" / "x"
    with pytest.raises(FileNotFoundError):
        write_atomic(target, b"x")
    assert list(tmp_path.iterdir()) == []


async def test_a_swap_moves_the_mtime_forward_even_when_the_clock_does_not(
    tmp_path: Path,
) -> None:
    """So a new version cannot repeat an old ETag (inode-mtime-size) by inode reuse."""
    store = open_store(str(tmp_path))
    etag = await store.create("k", b"1")
    assert etag is not None
    future_ns = 4_000_000_000 * 10**9  # the year 2096: the real clock is behind it
    os.utime(tmp_path / "k", ns=(future_ns, future_ns))
    head = await store.head("k")
    assert head is not None
    assert await store.swap("k", b"2", head.etag) is not None
    assert (tmp_path / "k").stat().st_mtime_ns > future_ns
