"""Sharded runs on a local job root, through the CLI: two shards, `status` and `merge` of the
root, another division refused; the account a ledger's requests belong to."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from support import item_rows, run_cli, write_csv

from batch.job import JobError
from batch.job.shards import shard_of
from batch.ledger import Ledger
from batch.pipeline.planning import use_account

N = 10


@pytest.fixture
def job(tmp_path):
    write_csv(tmp_path / "m.csv", item_rows(N))
    (tmp_path / "job.yaml").write_text(
        "manifest: m.csv\nqueue: local\nsim: {capacity: 4, latency: 'fixed:0'}\n"
    )
    return tmp_path


async def _run_both_shards(job, root):
    """Shards 0/2 and 1/2 of the job, one after the other, into `root`; each exits 0."""
    for index in (0, 1):
        code, _, err = await run_cli(
            "run", str(job / "job.yaml"), "--shard", f"{index}/2", "--output", str(root),
            cwd=job,
        )  # fmt: skip
        assert code == 0, err


async def test_two_shards_run_apart_and_merge_into_one_ledger(job):
    root = job / "root"
    await _run_both_shards(job, root)
    code, out, err = await run_cli("status", str(root), "--json")
    assert code == 0, err
    state = json.loads(out)
    assert state["shards"] == 2 and state["totals"]["completed"] == N
    assert sorted(state["by_shard"]) == ["00000-of-00002", "00001-of-00002"]
    assert 0 < state["by_shard"]["00000-of-00002"]["completed"] < N  # each has its own

    code, out, err = await run_cli("merge", str(root), "--json")
    assert code == 0, err
    merged = json.loads(out)
    assert (merged["items"], merged["outputs"], merged["missing_shards"]) == (N, N, [])
    with sqlite3.connect(root / "merged" / "ledger.sqlite") as conn:
        paths = [p for (p,) in conn.execute("SELECT path FROM outputs")]
    assert all((root / "merged" / p).is_file() for p in paths)  # ../shards/…/images/…
    assert (root / "merged" / "report.html").is_file()
    code, out, err = await run_cli("report", str(root))
    assert code == 0 and out.strip() == f"{root / 'merged'}/report.html", err

    code, out, err = await run_cli(
        "run", str(job / "job.yaml"), "--shard", "1/3", "--output", str(root), cwd=job
    )
    assert code == 2 and "divided into 2 shards, not 3" in err


async def test_reshard_moves_items_and_images_to_their_new_shards(job):
    root = job / "root"
    await _run_both_shards(job, root)
    code, out, err = await run_cli("reshard", str(root), "--shards", "3")
    assert code == 0, err
    assert "2 shards → 3" in out
    code, out, err = await run_cli("status", str(root), "--json")
    state = json.loads(out)
    assert state["shards"] == 3 and state["totals"]["completed"] == N
    for label in state["by_shard"]:
        with sqlite3.connect(root / "shards" / label / "ledger.sqlite") as conn:
            keys = [k for (k,) in conn.execute("SELECT key FROM items")]
            paths = [p for (p,) in conn.execute("SELECT path FROM outputs")]
        assert all(shard_of(k, 3) == int(label[:5]) for k in keys)
        assert all((root / "shards" / label / p).is_file() for p in paths)
    # the new division runs (nothing to do) and the old one is refused
    code, out, err = await run_cli(
        "run", str(job / "job.yaml"), "--shard", "2/3", "--output", str(root), cwd=job
    )
    assert code == 0, err
    code, out, err = await run_cli(
        "run", str(job / "job.yaml"), "--shard", "0/2", "--output", str(root), cwd=job
    )
    assert code == 2


async def test_a_key_in_two_shards_is_refused_and_nothing_is_merged(job):
    root = job / "root"
    code, _, err = await run_cli(
        "run", str(job / "job.yaml"), "--shard", "0/2", "--output", str(root), cwd=job
    )
    assert code == 0, err
    shutil.copytree(root / "shards" / "00000-of-00002", root / "shards" / "00001-of-00002")
    code, _out, err = await run_cli("merge", str(root))
    assert code == 2 and "nothing was merged" in err
    assert not (root / "merged" / "ledger.sqlite").exists()


def test_a_ledger_keeps_its_account_while_its_requests_are_in_flight(tmp_path):
    with Ledger.open(tmp_path) as ledger:
        use_account(ledger, "team-a")
        use_account(ledger, "team-b")  # nothing in flight: the ledger moves
        assert ledger.get_meta("account") == "team-b"
        ledger._conn.execute(
            "INSERT INTO items (key, source, endpoint, request, request_hash, state, attempts,"
            " created_at, updated_at, request_id) VALUES ('k', 'm:2', 'e', '{}', 'h',"
            " 'submitted', 1, 0, 0, 'req-1')"
        )
        with pytest.raises(JobError, match="in flight on account 'team-b'"):
            use_account(ledger, "team-a")
        assert ledger.get_meta("account") == "team-b"


async def test_a_split_manifest_runs_one_file_per_shard_into_one_root(job):
    code, out, err = await run_cli("split", str(job / "job.yaml"), "--shards", "2", cwd=job)
    assert code == 0, err
    files = sorted(job.glob("m.shard-*.csv"))
    assert [f.name for f in files] == ["m.shard-00000-of-00002.csv", "m.shard-00001-of-00002.csv"]
    counts = [int(line.rsplit(": ", 1)[1].split()[0]) for line in out.splitlines()]
    assert sum(counts) == N
    root = job / "root"
    for index, manifest in enumerate(files):
        code, _, err = await run_cli(
            "run", str(manifest), "--queue-url", "local", "--shard", f"{index}/2",
            "--output", str(root), cwd=job,
        )  # fmt: skip
        assert code == 0, err
    code, out, err = await run_cli("merge", str(root), "--json")
    assert code == 0, err
    assert json.loads(out)["items"] == N


async def test_a_job_root_is_not_run_whole_nor_with_an_empty_shard(job):
    root = job / "root"
    code, _, err = await run_cli(
        "run", str(job / "job.yaml"), "--shard", "0/2", "--output", str(root), cwd=job
    )
    assert code == 0, err
    for extra in ([], ["--shard", ""]):  # e.g. --shard "$SHARD" with SHARD unset
        code, _, err = await run_cli(
            "run", str(job / "job.yaml"), "--output", str(root), *extra, cwd=job
        )
        assert code == 2, err
    assert not (root / "ledger.sqlite").exists()


async def test_odd_roots_are_input_errors_not_crashes(job):
    (job / "afile").write_text("x")
    code, _, err = await run_cli(
        "run", str(job / "job.yaml"), "--shard", "0/2", "--output", str(job / "afile"), cwd=job
    )
    assert code == 2 and "not a folder" in err
    code, _, err = await run_cli(
        "run", str(job / "job.yaml"), "--output", "file://rel/path", cwd=job
    )
    assert code == 2 and "absolute path" in err
    # a dry run records no division
    code, _, err = await run_cli(
        "run", str(job / "job.yaml"), "--shard", "0/3", "--output", str(job / "r"), "--dry-run",
        cwd=job,
    )  # fmt: skip
    assert code == 0, err
    assert not (job / "r" / "job.json").exists()


async def test_merge_names_a_damaged_shard_and_skips_folders_of_another_division(job):
    root = job / "root"
    await _run_both_shards(job, root)
    shutil.copytree(root / "shards" / "00000-of-00002", root / "shards" / "00000-of-00003")
    code, out, err = await run_cli("merge", str(root), "--json")
    assert code == 0 and json.loads(out)["items"] == N, err  # the stray folder is not a shard
    ledger = root / "shards" / "00001-of-00002" / "ledger.sqlite"
    ledger.write_bytes(ledger.read_bytes()[:1000])
    for name in ("-wal", "-shm"):
        ledger.with_name("ledger.sqlite" + name).unlink(missing_ok=True)
    code, _, err = await run_cli("merge", str(root))
    assert code == 2 and "00001-of-00002" in err and "doctor" in err
