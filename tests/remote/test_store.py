"""Store: every method on obstore's memory store and on a local folder; URLs and errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from batch.errors import ExitCode
from batch.remote import (
    Head,
    MissingObjectError,
    Store,
    StoreConfigError,
    StoreError,
    open_store,
)
from batch.remote.errors import INSTALL_HINT, reason

pytest.importorskip("obstore")


async def test_put_get_roundtrip_and_overwrite(store: Store) -> None:
    await store.put("a/b.txt", b"one")
    await store.put("a/b.txt", b"two")
    assert await store.get("a/b.txt") == b"two"


async def test_get_of_absent_key_is_missing_object_error(store: Store) -> None:
    with pytest.raises(MissingObjectError, match=r"get .*/nope\.txt: no such object"):
        await store.get("nope.txt")


async def test_exists_and_head_report_etag_and_size(store: Store) -> None:
    assert not await store.exists("x.bin")
    assert await store.head("x.bin") is None
    await store.put("x.bin", b"12345")
    head = await store.head("x.bin")
    assert isinstance(head, Head)
    assert head.size == 5 and head.etag
    assert await store.exists("x.bin")


async def test_list_is_a_plain_string_prefix_sorted(store: Store) -> None:
    for key in ("j/000002.jsonl", "j/000001.jsonl", "jx/1", "a/x.json", "a/x.json.bak", "a/y"):
        await store.put(key, b"-")
    assert await store.list("j/") == ["j/000001.jsonl", "j/000002.jsonl"]
    assert await store.list("a/x") == ["a/x.json", "a/x.json.bak"]
    assert await store.list("j") == ["j/000001.jsonl", "j/000002.jsonl", "jx/1"]
    assert len(await store.list()) == 6
    assert await store.list("none/") == []


async def test_delete_is_idempotent(store: Store) -> None:
    await store.put("d", b"1")
    await store.delete("d")
    await store.delete("d")  # absent: no error on any store
    assert not await store.exists("d")


async def test_put_file_and_get_file_stream_a_multipart_sized_file(
    store: Store, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    payload = os.urandom(6 * 1024 * 1024 + 17)  # over obstore's 5 MB multipart threshold
    src.write_bytes(payload)
    await store.put_file("blobs/big.bin", src)
    dest = tmp_path / "out" / "copy.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    await store.get_file("blobs/big.bin", dest)
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.bin"]  # no temp left


async def test_get_file_of_absent_key_leaves_destination_untouched(
    store: Store, tmp_path: Path
) -> None:
    dest = tmp_path / "keep.bin"
    dest.write_bytes(b"keep")
    with pytest.raises(MissingObjectError):
        await store.get_file("absent", dest)
    assert dest.read_bytes() == b"keep"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


async def test_put_if_absent_is_create_only(store: Store) -> None:
    assert await store.put_if_absent("once", b"first")
    assert not await store.put_if_absent("once", b"second")
    assert await store.get("once") == b"first"


async def test_put_if_match_swaps_only_on_the_current_etag(store: Store) -> None:
    await store.put("cas", b"v1")
    first = await store.head("cas")
    assert first is not None
    assert await store.put_if_match("cas", b"v2", first.etag)
    assert not await store.put_if_match("cas", b"v3", first.etag)  # stale ETag
    assert await store.get("cas") == b"v2"


async def test_swap_of_deleted_object_fails(store: Store) -> None:
    etag = await store.create("gone", b"x")
    assert etag is not None
    await store.delete("gone")
    assert await store.swap("gone", b"y", etag) is None
    assert not await store.exists("gone")


async def test_create_and_swap_return_etags_that_chain(store: Store) -> None:
    e1 = await store.create("chain", b"1")
    assert e1 is not None
    e2 = await store.swap("chain", b"2", e1)
    assert e2 is not None and e2 != e1
    assert await store.swap("chain", b"3", e2) is not None
    versioned = await store.get_versioned("chain")
    assert versioned is not None and versioned[0] == b"3"
    head = await store.head("chain")
    assert head is not None and versioned[1] == head.etag


async def test_get_versioned_of_absent_key_is_none(store: Store) -> None:
    assert await store.get_versioned("nothing") is None


async def test_delete_if_match_deletes_only_the_expected_version(store: Store) -> None:
    e1 = await store.create("lease", b"1")
    assert e1 is not None
    e2 = await store.swap("lease", b"2", e1)
    assert e2 is not None
    assert not await store.delete_if_match("lease", e1)
    assert await store.exists("lease")
    assert await store.delete_if_match("lease", e2)
    assert not await store.exists("lease")
    assert not await store.delete_if_match("lease", e2)


async def test_sign_is_refused_on_local_and_memory_stores(store: Store) -> None:
    with pytest.raises(StoreConfigError, match="presigned URLs need an s3://"):
        await store.sign("x", 60)


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a"])
async def test_invalid_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(StoreConfigError, match="invalid object key"):
        await store.put(key, b"x")


async def test_keys_are_relative_to_the_url_path(tmp_path: Path) -> None:
    outer = open_store(tmp_path.as_uri())
    inner = open_store(f"file://{tmp_path}/shards/00001")
    await inner.put("lease.json", b"{}")
    assert await outer.list() == ["shards/00001/lease.json"]
    assert (tmp_path / "shards" / "00001" / "lease.json").read_bytes() == b"{}"
    assert inner.url("lease.json") == f"file://{tmp_path}/shards/00001/lease.json"


async def test_plain_path_opens_a_local_folder_and_creates_it(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "new" / "root"))
    await store.put("k", b"v")
    assert (tmp_path / "new" / "root" / "k").read_bytes() == b"v"


async def test_memory_prefix_isolates_keys_within_one_store() -> None:
    store = open_store("memory:///a/b")
    await store.put("x/1", b"1")
    assert await store.list() == ["x/1"]
    assert store.url("x/1") == "memory:///a/b/x/1"


def test_unsupported_scheme_is_a_config_error_with_exit_code_2() -> None:
    with pytest.raises(StoreConfigError, match=r"unsupported store URL scheme 'ftp://'") as info:
        open_store("ftp://host/path")
    assert info.value.exit_code == ExitCode.INVALID


def test_url_shown_without_credentials_or_query() -> None:
    store = open_store("s3://AKIDSECRET:hunter2@bucket/jobs/a?sig=abc")
    assert store.url("k") == "s3://bucket/jobs/a/k"
    assert "hunter2" not in repr(store)


def test_missing_obstore_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the [cloud] extra, opening a store says what to install (no traceback)."""
    monkeypatch.setitem(sys.modules, "obstore", None)
    monkeypatch.setitem(sys.modules, "obstore.store", None)
    with pytest.raises(StoreConfigError) as info:
        open_store("memory:///")
    assert str(info.value) == INSTALL_HINT
    assert "pip install 'firered-batch[cloud]'" in str(info.value)


async def test_unreachable_endpoint_is_one_line_without_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",  # nothing listens on port 1
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIDSECRETID",
        "AWS_SECRET_ACCESS_KEY": "verysecretvalue",
    }.items():
        monkeypatch.setenv(name, value)
    store = open_store("s3://bucket/prefix", max_retries=0)
    with pytest.raises(StoreError, match=r"^get s3://bucket/prefix/k: .*unreachable") as info:
        await store.get("k")
    message = str(info.value)
    assert "\n" not in message
    assert "AKIDSECRETID" not in message and "verysecretvalue" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_reason_keeps_one_line_and_masks_signed_query_values() -> None:
    exc = RuntimeError(
        "GET https://b.s3/x?X-Amz-Credential=AKID%2F1&X-Amz-Signature=deadbeef failed\n"
        "Debug source: lots of lines"
    )
    text = reason(exc)
    assert text == "GET https://b.s3/x?X-Amz-Credential=***&X-Amz-Signature=*** failed"
    assert len(reason(RuntimeError("x" * 1000))) == 240


async def test_local_file_problems_are_not_reported_as_missing_objects(
    store: Store, tmp_path: Path
) -> None:
    with pytest.raises(StoreError, match="no such file") as put_info:
        await store.put_file("k", tmp_path / "absent.bin")
    assert not isinstance(put_info.value, MissingObjectError)
    await store.put("k", b"v")
    with pytest.raises(StoreError, match=r"cannot write .*no-folder") as get_info:
        await store.get_file("k", tmp_path / "no-folder" / "out.bin")
    assert not isinstance(get_info.value, MissingObjectError)


async def test_check_passes_on_a_reachable_store(store: Store) -> None:
    await store.check()
    await store.put("k", b"v")
    await store.check()
