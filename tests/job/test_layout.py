"""Where a sharded job's parts go, the job record, and the shards' accounts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.errors import ExitCode
from batch.job import JobSpec
from batch.job.layout import (
    JobRecord,
    claim_local_record,
    is_store_url,
    place,
    read_local_record,
    shard_folder,
)
from batch.job.shards import Shard, ShardError


def _spec(tmp_path: Path, **fields) -> JobSpec:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,prompt,image_urls\na,x,https://example.com/a.png\n")
    return JobSpec.for_manifest(manifest, output=tmp_path / "out", **fields)


def test_a_local_shard_works_in_its_folder_under_the_job_root_which_records_n(tmp_path):
    placed = place(
        _spec(tmp_path), output=str(tmp_path / "root"), shard=Shard(2, 4), work_dir=None,
        concurrency_given=False,
    )  # fmt: skip
    assert placed.spec.output == tmp_path / "root" / "shards" / "00002-of-00004"
    assert placed.spec.shard == "2/4" and placed.spec.store is None
    assert read_local_record(tmp_path / "root") == JobRecord("m", 4)


def test_another_division_of_the_same_job_is_refused_with_exit_2(tmp_path):
    claim_local_record(tmp_path, JobRecord("m", 4))
    claim_local_record(tmp_path, JobRecord("m", 4))  # the same: fine
    with pytest.raises(ShardError) as caught:
        claim_local_record(tmp_path, JobRecord("m", 8))
    assert caught.value.exit_code == ExitCode.INVALID
    assert "divided into 4 shards, not 8" in str(caught.value)
    (tmp_path / "job.json").write_text(json.dumps({"name": "m", "shards": 4, "key_function": "x"}))
    with pytest.raises(ShardError, match="key function"):
        claim_local_record(tmp_path, JobRecord("m", 4))


def test_an_object_store_output_works_in_a_local_folder_mirrored_to_the_shard_prefix(tmp_path):
    assert is_store_url("s3://bucket/jobs/x") and not is_store_url(str(tmp_path))
    placed = place(
        _spec(tmp_path), output="s3://bucket/jobs/x/", shard=None, work_dir=tmp_path / "w",
        concurrency_given=False,
    )  # fmt: skip
    assert placed.shard == Shard(0, 1)
    assert placed.spec.output == shard_folder(tmp_path / "w", Shard(0, 1))
    assert placed.spec.store == "s3://bucket/jobs/x/shards/00000-of-00001"
    assert placed.root == "s3://bucket/jobs/x"


def test_shards_are_dealt_to_accounts_by_their_limits(tmp_path):
    accounts = [
        {"name": "big", "key_env": "FAL_KEY_BIG", "concurrency": 30},
        {"name": "small", "key_env": "FAL_KEY_SMALL", "concurrency": 10},
    ]
    spec = _spec(tmp_path, accounts=accounts)
    dealt = [
        place(spec, output=str(tmp_path / "r"), shard=Shard(i, 4), work_dir=None,
              concurrency_given=False)
        for i in range(4)
    ]  # fmt: skip
    assert [p.account.name for p in dealt] == ["big", "big", "big", "small"]
    # each shard takes its share of its account's limit
    assert [p.spec.concurrency for p in dealt] == [10, 10, 10, 10]
    given = place(
        spec, output=str(tmp_path / "r"), shard=Shard(3, 4), work_dir=None,
        concurrency_given=True,
    )  # fmt: skip
    assert given.spec.concurrency == spec.concurrency  # --concurrency wins


def test_an_account_names_its_key_variable_never_the_key(tmp_path):
    from batch.job import JobError

    with pytest.raises(JobError):
        _spec(tmp_path, accounts=[{"name": "a b", "key_env": "X", "concurrency": 1}])
    with pytest.raises(JobError):
        _spec(tmp_path, accounts=[{"name": "a", "key_env": "not-a-var", "concurrency": 1}])
