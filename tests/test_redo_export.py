"""After review: redo what was rejected (`retry --rejected`), export what was approved
(`export --accepted --format …`), through the CLI."""

from __future__ import annotations

import json
import tarfile

import pytest
from support import item_rows, run_cli, write_csv

from batch.ledger import Ledger

N = 4


@pytest.fixture
async def reviewed(tmp_path):
    """A finished job; item000 approved, item001 rejected (with a note)."""
    write_csv(tmp_path / "m.csv", item_rows(N))
    (tmp_path / "job.yaml").write_text(
        "manifest: m.csv\nqueue: local\nsim: {capacity: 4, latency: 'fixed:0'}\n"
    )
    code, _, err = await run_cli("run", str(tmp_path / "job.yaml"), cwd=tmp_path)
    assert code == 0, err
    out = tmp_path / "outputs" / "job"
    with Ledger.open(out) as ledger:
        ledger.reviews.decide("item000", 0, "approved", reviewer="ann")
        ledger.reviews.decide("item001", 0, "rejected", "too dark", reviewer="ann")
    return tmp_path, out


async def test_a_rejected_item_is_redone_as_a_new_linked_item_and_the_approved_one_is_not(
    reviewed,
):
    tmp, out = reviewed
    with Ledger.open(out) as ledger:
        before = {k: (ledger.get(k), ledger.outputs(k)) for k in ("item000", "item001")}
    code, text, err = await run_cli(
        "retry", str(tmp / "job.yaml"), "--rejected", "--new-seed", "--prompt-suffix",
        "brighter", cwd=tmp,
    )  # fmt: skip
    assert code == 0, err
    assert "item001~redo1: redo of item001" in text and "1 rejected items" in text
    code, text, err = await run_cli("retry", str(tmp / "job.yaml"), "--rejected", cwd=tmp)
    assert "0 rejected items" in text  # redone once; its redo is reviewed in its turn
    code, _, err = await run_cli("run", str(tmp / "job.yaml"), cwd=tmp)
    assert code == 0, err
    with Ledger.open(out) as ledger:
        redo = ledger.get("item001~redo1")
        assert redo is not None and redo.state == "completed"
        assert redo.payload["prompt"].endswith(" brighter")
        assert redo.payload["seed"] != before["item001"][0].payload.get("seed")
        (link,) = ledger._conn.execute(
            "SELECT redo_of FROM items WHERE key = 'item001~redo1'"
        ).fetchone()
        assert link == "item001"
        for key, (row, outputs) in before.items():  # nothing of the reviewed items changed
            assert ledger.get(key).state == row.state and ledger.outputs(key) == outputs
            assert all((out / o.path).is_file() for o in outputs)
        assert ledger.reviews.decision("item001", 0).decision == "rejected"
    code, text, err = await run_cli("status", str(tmp / "job.yaml"), "--json", cwd=tmp)
    assert json.loads(text)["counts"]["completed"] == N + 1  # the redo stays in the job


async def test_redo_options_are_checked(reviewed):
    tmp, _ = reviewed
    code, _, err = await run_cli("retry", str(tmp / "job.yaml"), "--new-seed", cwd=tmp)
    assert code == 2 and "go with --rejected" in err
    code, _, err = await run_cli(
        "retry", str(tmp / "job.yaml"), "--rejected", "--prompt", "a", "--prompt-suffix", "b",
        cwd=tmp,
    )  # fmt: skip
    assert code == 2 and "not both" in err
    code, _, err = await run_cli(
        "retry", str(tmp / "job.yaml"), "--rejected", "--prompt", "bad\x07", cwd=tmp
    )
    assert code == 2 and "control character" in err


@pytest.mark.parametrize("fmt", ["folder", "jsonl", "webdataset", "parquet"])
async def test_the_approved_outputs_export_as_a_dataset(reviewed, fmt):
    tmp, out = reviewed
    code, text, err = await run_cli(
        "export", str(tmp / "job.yaml"), "--accepted", "--format", fmt, cwd=tmp
    )
    assert code == 0, err
    dest = out / f"dataset-{fmt}"
    assert text.startswith("1 records")  # only item000's approved output
    if fmt == "folder":
        (row,) = [
            json.loads(x) for x in (dest / "train" / "metadata.jsonl").read_text().splitlines()
        ]
        assert row["key"] == "item000" and (dest / "train" / row["file_name"]).is_file()
    elif fmt == "jsonl":
        (row,) = [json.loads(x) for x in (dest / "train.jsonl").read_text().splitlines()]
        assert row["key"] == "item000" and row["reviewer"] == "ann"
    elif fmt == "webdataset":
        (shard,) = dest.glob("shard-*.tar")
        with tarfile.open(shard) as tar:
            names = tar.getnames()
        assert any(n.endswith(".output.png") for n in names)
        assert any(n.endswith(".json") for n in names)
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        (part,) = dest.glob("*.parquet")
        table = pq.read_table(part)
        assert table.num_rows == 1 and table.column("key").to_pylist() == ["item000"]


def _ledger_with(path, keys):
    ledger = Ledger.open(path)
    with ledger.group() as conn:
        conn.executemany(
            "INSERT INTO items (key, source, endpoint, request, request_hash, state, attempts,"
            " created_at, updated_at, in_manifest) VALUES (?, 'm:1', 'e', ?, 'h', 'completed',"
            " 1, 0, 0, 1)",
            [(k, '{"image_urls":["https://x.test/a.png"],"prompt":"p"}') for k in keys],
        )
    return ledger


def test_redo_names_follow_the_original_whatever_its_key(tmp_path):
    from batch.ledger.redo import Change, redo_rejected

    with _ledger_with(tmp_path, ["a", "a~redo²", "shot~redo-final"]) as ledger:
        with ledger.group() as conn:
            made = redo_rejected(conn, ["a", "shot~redo-final"], Change())
        assert made == [
            ("a~redo1", "a", False),
            ("shot~redo-final~redo1", "shot~redo-final", False),
        ]
        with ledger.group() as conn:  # a rejected redo is redone in its turn, once
            assert redo_rejected(conn, ["a~redo1", "a"], Change()) == [
                ("a~redo2", "a~redo1", False)
            ]


def test_many_rejected_items_are_redone_by_index_not_by_scans(tmp_path):
    from batch.ledger.redo import Change, redo_rejected

    keys = [f"item{i:05d}" for i in range(3000)]
    with _ledger_with(tmp_path, keys) as ledger, ledger.group() as conn:
        assert len(redo_rejected(conn, keys, Change())) == 3000
        plan = " ".join(
            str(row[-1])
            for row in conn.execute("EXPLAIN QUERY PLAN SELECT 1 FROM items WHERE redo_of = 'x'")
        )
    assert "items_redo_of" in plan


async def test_a_waiting_redo_takes_the_new_prompt_and_is_dropped_once_approved(reviewed):
    tmp, out = reviewed
    job = str(tmp / "job.yaml")
    code, text, err = await run_cli("retry", job, "--rejected", "--prompt", "typo", cwd=tmp)
    assert code == 0 and "item001~redo1: redo of item001" in text, err
    code, text, err = await run_cli("retry", job, "--rejected", "--prompt", "fixed", cwd=tmp)
    assert "item001~redo1: redo of item001 (its request changed)" in text
    with Ledger.open(out) as ledger:
        assert ledger.get("item001~redo1").payload["prompt"] == "fixed"
    # too long once the suffix is added: refused, nothing changes
    code, _, err = await run_cli("retry", job, "--rejected", "--prompt-suffix", "x" * 9999, cwd=tmp)
    assert code == 2 and "redo of item001: prompt" in err
    with Ledger.open(out) as ledger:
        assert ledger.get("item001~redo1").payload["prompt"] == "fixed"
        ledger.reviews.decide("item001", 0, "approved", reviewer="ann")  # changed her mind
    code, text, err = await run_cli("run", job, cwd=tmp)
    assert code == 0, err
    with Ledger.open(out) as ledger:
        assert ledger.get("item001~redo1") is None  # never sent, never paid for


async def test_a_failed_redo_is_redone_again(reviewed):
    tmp, out = reviewed
    job = str(tmp / "job.yaml")
    await run_cli("retry", job, "--rejected", cwd=tmp)
    with Ledger.open(out) as ledger:
        ledger.mark_failed("item001~redo1", "permanent", "bad request")
    code, text, err = await run_cli("retry", job, "--rejected", "--new-seed", cwd=tmp)
    assert code == 0 and "item001~redo2: redo of item001" in text, err


async def test_review_by_key_takes_a_key_that_ends_in_a_number_as_it_is(tmp_path):
    rows = [
        {"id": "shot", "prompt": "a", "image_urls": item_rows(1)[0]["image_urls"]},
        {"id": "shot:2", "prompt": "b", "image_urls": item_rows(1)[0]["image_urls"]},
    ]
    write_csv(tmp_path / "m.csv", rows)
    (tmp_path / "job.yaml").write_text("manifest: m.csv\nqueue: local\n")
    code, _, err = await run_cli("run", str(tmp_path / "job.yaml"), cwd=tmp_path)
    assert code == 0, err
    job = str(tmp_path / "job.yaml")
    code, text, err = await run_cli("review", job, "--reject", "shot:2", cwd=tmp_path)
    assert code == 0 and text.strip() == "rejected shot:2 output 1", err
    code, text, err = await run_cli("review", job, "--approve", "shot:1", cwd=tmp_path)
    assert code == 0 and text.strip() == "approved shot output 1", err
