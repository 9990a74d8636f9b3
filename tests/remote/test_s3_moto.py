"""The S3 protocol, against moto's S3 server: conditional writes, presigning, the lease."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from batch.remote import (
    Journal,
    Lease,
    LeaseHeld,
    LeaseLost,
    StoreConfigError,
    open_store,
    restore_sqlite,
    snapshot_sqlite,
)

if TYPE_CHECKING:
    from remote.conftest import Clock, MotoS3

pytest.importorskip("obstore")
pytest.importorskip("moto")


async def test_put_get_list_under_the_url_prefix(moto_s3: MotoS3) -> None:
    store = open_store(moto_s3.url("jobs/demo"))
    await store.put("shards/00000-of-00002/status.json", b"{}")
    await store.put("job.json", b'{"n": 2}')
    assert await store.get("job.json") == b'{"n": 2}'
    assert await store.list("shards/") == ["shards/00000-of-00002/status.json"]
    whole_bucket = open_store(moto_s3.url())
    assert await whole_bucket.list() == [
        "jobs/demo/job.json",
        "jobs/demo/shards/00000-of-00002/status.json",
    ]
    await store.delete("job.json")
    await store.delete("job.json")
    assert not await store.exists("job.json")


async def test_put_file_and_get_file_over_multipart(moto_s3: MotoS3, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    payload = bytes(range(256)) * (24 * 1024 + 3)  # 6 MB: a multipart upload
    src.write_bytes(payload)
    store = open_store(moto_s3.url("p"))
    await store.put_file("big.bin", src)
    head = await store.head("big.bin")
    assert head is not None and head.size == len(payload)
    await store.get_file("big.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == payload


async def test_create_only_conflicts_and_cas_precondition_fails(moto_s3: MotoS3) -> None:
    store = open_store(moto_s3.url("p"))
    assert await store.put_if_absent("lease.json", b"1")
    assert not await store.put_if_absent("lease.json", b"2")  # If-None-Match: * → 412
    head = await store.head("lease.json")
    assert head is not None
    assert await store.put_if_match("lease.json", b"3", head.etag)
    assert not await store.put_if_match("lease.json", b"4", head.etag)  # stale ETag → 412
    assert await store.get("lease.json") == b"3"
    assert not await store.put_if_match("absent.json", b"5", head.etag)  # 404 → no swap


async def test_presigned_url_fetches_the_object_without_credentials(moto_s3: MotoS3) -> None:
    store = open_store(moto_s3.url("inputs"))
    await store.put("cat.png", b"\x89PNG fake")
    url = await store.sign("cat.png", 300)
    assert url.startswith(f"{moto_s3.endpoint}/{moto_s3.bucket}/inputs/cat.png?")
    assert "X-Amz-Signature=" in url
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        assert reply.status == 200
        assert await reply.read() == b"\x89PNG fake"


async def test_missing_bucket_is_a_config_error_not_an_absent_object(moto_s3: MotoS3) -> None:
    store = open_store(f"s3://{moto_s3.bucket}-nope/p")
    with pytest.raises(StoreConfigError, match="bucket or container does not exist"):
        await store.check()
    with pytest.raises(StoreConfigError, match="bucket or container does not exist"):
        await store.get("k")
    await open_store(moto_s3.url("p")).check()  # an existing bucket, even empty, is fine


async def test_lease_claim_held_takeover_lost_release(moto_s3: MotoS3, clock: Clock) -> None:
    store = open_store(moto_s3.url("shards/00001-of-00004"))
    a = Lease(store, owner="pod-a:1:aa", ttl_s=60, now=clock)
    b = Lease(store, owner="pod-b:2:bb", ttl_s=60, now=clock)
    await a.claim()
    with pytest.raises(LeaseHeld, match="held by pod-a:1:aa"):
        await b.claim()
    clock.advance(30)
    await a.renew()
    clock.advance(61)
    await b.claim()
    with pytest.raises(LeaseLost, match="now held by pod-b:2:bb"):
        await a.renew()
    await a.release()
    assert await store.exists("lease.json")
    await b.release()
    assert not await store.exists("lease.json")


async def test_snapshot_and_journal_round_trip(moto_s3: MotoS3, tmp_path: Path) -> None:
    import sqlite3

    store = open_store(moto_s3.url("shards/00000-of-00001"))
    db_path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (42)")
    db.close()
    await snapshot_sqlite(db_path, store, "ledger.sqlite")
    assert await restore_sqlite(store, "ledger.sqlite", tmp_path / "again.sqlite")
    again = sqlite3.connect(tmp_path / "again.sqlite")
    assert again.execute("SELECT x FROM t").fetchall() == [(42,)]
    again.close()
    await Journal(store).announce(["k1", "k2"])
    assert await Journal(store).announce(["k3"]) == "journal/000002.jsonl"
    assert await Journal(store).announced() == {"k1", "k2", "k3"}
