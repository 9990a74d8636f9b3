"""Shards: the key → shard rule, `--shard` and its environments, and splitting a manifest."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from batch.errors import ExitCode, InvalidInputError
from batch.job.shards import (
    KEY_FUNCTION,
    MAX_SHARDS,
    Shard,
    ShardError,
    parse_shard,
    shard_of,
    shard_path,
    split_rows,
)
from batch.manifest import ManifestCheck, ManifestError


def slurm(task: int, low: int, high: int, count: int, step: int | None = 1) -> dict[str, str]:
    env = {
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(low),
        "SLURM_ARRAY_TASK_MAX": str(high),
        "SLURM_ARRAY_TASK_COUNT": str(count),
    }
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    return env


# --- Shard and shard_of -------------------------------------------------------------------


def test_shard_label_and_str() -> None:
    shard = Shard(3, 8)
    assert shard.label == "00003-of-00008"
    assert str(shard) == "3/8"


def test_shard_refuses_an_index_out_of_range() -> None:
    with pytest.raises(ShardError, match="below the count"):
        Shard(4, 4)


def test_shard_error_is_an_input_error_with_exit_2() -> None:
    assert issubclass(ShardError, InvalidInputError)
    assert ShardError.exit_code == ExitCode.INVALID == 2


def test_shard_of_is_the_documented_formula() -> None:
    """sha256 of the key's UTF-8, first 8 bytes big-endian, mod N (pinned: a change would move
    items of running jobs to other shards)."""
    assert KEY_FUNCTION == "sha256-64-mod"
    # sha256(b"cat") starts 77af778b51abd4a3
    assert shard_of("cat", 8) == 0x77AF778B51ABD4A3 % 8
    assert shard_of("cat", 1000) == 0x77AF778B51ABD4A3 % 1000
    assert shard_of("cat", 1) == 0
    assert Shard(shard_of("cat", 8), 8).owns("cat")
    assert not Shard((shard_of("cat", 8) + 1) % 8, 8).owns("cat")


def test_100k_keys_spread_evenly_over_4_shards() -> None:
    counts = Counter(shard_of(f"h{i:020x}", 4) for i in range(100_000))
    assert sorted(counts) == [0, 1, 2, 3]
    for n in counts.values():
        assert abs(n - 25_000) <= 500, counts  # within ±2% of an even share


def test_shards_are_stable_when_keys_are_reordered_or_added() -> None:
    keys = [f"item-{i}" for i in range(2000)]
    before = {k: shard_of(k, 8) for k in keys}
    grown = keys + [f"new-{i}" for i in range(500)]
    random.Random(7).shuffle(grown)
    after = {k: shard_of(k, 8) for k in grown}
    assert all(after[k] == before[k] for k in keys)


# --- parse_shard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0/1", Shard(0, 1)), ("3/8", Shard(3, 8)), (" 1 / 4 ", Shard(1, 4)), ("0/100000", None)],
)
def test_parse_index_over_count(text: str, expected: Shard | None) -> None:
    got = parse_shard(text, {})
    assert got == (expected or Shard(0, MAX_SHARDS))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3/2", "--shard 3/2: the index must be below the count (0 to 1"),
        ("2/2", "--shard 2/2: the index must be below the count"),
        ("-1/4", "--shard -1/4: the index must be 0 or more"),
        ("a/b", "--shard a/b: expected INDEX/COUNT with whole numbers"),
        ("1/0", "--shard 1/0: the count must be at least 1"),
        ("0/100001", "--shard 0/100001: the count must be at most 100000"),
        ("0/99999999999999999999", "the count must be at most 100000"),
        ("3", "expected INDEX/COUNT"),
        ("1/2/3", "expected INDEX/COUNT"),
        ("", "expected INDEX/COUNT"),
        ("1.0/2", "expected INDEX/COUNT"),
        ("\u0661/2", "expected INDEX/COUNT"),  # an Arabic-Indic digit: int() takes it, we do not
    ],
)
def test_parse_refuses_with_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ShardError) as caught:
        parse_shard(text, {})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_auto_from_our_variables_first() -> None:
    env = {
        "FIRERED_SHARD_INDEX": "2",
        "FIRERED_SHARD_COUNT": "5",
        "JOB_COMPLETION_INDEX": "0",
        **slurm(0, 0, 3, 4),
    }
    assert parse_shard("auto", env) == Shard(2, 5)
    assert parse_shard("AUTO", env) == Shard(2, 5)


def test_auto_from_kubernetes_indexed_job() -> None:
    env = {"JOB_COMPLETION_INDEX": "3", "FIRERED_SHARD_COUNT": "4"}
    assert parse_shard("auto", env) == Shard(3, 4)


def test_auto_kubernetes_without_count_says_to_set_it() -> None:
    with pytest.raises(ShardError, match=r"FIRERED_SHARD_COUNT is not.*spec\.completions"):
        parse_shard("auto", {"JOB_COMPLETION_INDEX": "1"})


def test_auto_kubernetes_index_beyond_count() -> None:
    with pytest.raises(ShardError, match=r"JOB_COMPLETION_INDEX=4.*below the count"):
        parse_shard("auto", {"JOB_COMPLETION_INDEX": "4", "FIRERED_SHARD_COUNT": "4"})


def test_auto_our_index_without_count() -> None:
    with pytest.raises(ShardError, match="FIRERED_SHARD_INDEX is set but FIRERED_SHARD_COUNT"):
        parse_shard("auto", {"FIRERED_SHARD_INDEX": "1"})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (slurm(0, 0, 3, 4), Shard(0, 4)),
        (slurm(3, 0, 3, 4), Shard(3, 4)),
        (slurm(5, 4, 7, 4), Shard(1, 4)),  # --array=4-7: shifted to 0-based
        (slurm(1, 1, 1, 1), Shard(0, 1)),
        (slurm(2, 0, 3, 4, step=None), Shard(2, 4)),  # no step variable: a plain range
        ({**slurm(2, 0, 3, 4), "FIRERED_SHARD_COUNT": "4"}, Shard(2, 4)),
    ],
)
def test_auto_from_slurm_array(env: dict[str, str], expected: Shard) -> None:
    assert parse_shard("auto", env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (slurm(2, 0, 6, 4, step=2), "has a step: submit --array=0-3"),  # --array=0-6:2
        (slurm(3, 1, 9, 3), "has gaps"),  # --array=1,3,9
        (slurm(0, 0, 3, 4) | {"FIRERED_SHARD_COUNT": "8"}, "FIRERED_SHARD_COUNT=8 but"),
        ({k: v for k, v in slurm(0, 0, 3, 4).items() if k != "SLURM_ARRAY_TASK_COUNT"}, "COUNT"),
        (slurm(0, 0, 3, 4) | {"SLURM_ARRAY_TASK_MIN": "x"}, "SLURM_ARRAY_TASK_MIN='x' is not"),
    ],
)
def test_auto_refuses_slurm_arrays_it_cannot_map(env: dict[str, str], message: str) -> None:
    with pytest.raises(ShardError, match=message):
        parse_shard("auto", env)


def test_auto_with_nothing_lists_what_it_looked_for() -> None:
    with pytest.raises(ShardError) as caught:
        parse_shard("auto", {"HOME": "/root"})
    text = str(caught.value)
    for name in ("FIRERED_SHARD_INDEX", "FIRERED_SHARD_COUNT", "JOB_COMPLETION_INDEX"):
        assert name in text
    assert "SLURM_ARRAY_TASK_ID" in text
    assert "\n" not in text


# --- split_rows -----------------------------------------------------------------------------

CSV_TEXT = (
    "id,prompt,image_urls,seed\n"
    'quoted,"snow, heavily ""now""\nand a second line",https://x.test/q.png,1\n'
    "\n"
    + "".join(f"r{i},prompt {i},https://x.test/{i}.png,{i}\n" for i in range(200))
    + "".join(f",no id {i},https://x.test/n{i}.png,\n" for i in range(100))
    + ",no id 0,https://x.test/n0.png,\n"  # an exact duplicate: skipped, as a run skips it
)


def _keys(path: Path) -> list[str]:
    return [item.key for item in ManifestCheck(path).items()]


def _check_split(manifest: Path, count: int, rows: tuple[int, ...]) -> list[Path]:
    """Each shard's keys are the keys `shard_of` puts there; all shards' = the manifest's."""
    paths = [shard_path(manifest, Shard(i, count)) for i in range(count)]
    everything: list[str] = []
    for index, path in enumerate(paths):
        keys = _keys(path)  # the project's loader reads the split file
        assert len(keys) == rows[index]
        assert all(shard_of(k, count) == index for k in keys)
        everything += keys
    assert sorted(everything) == sorted(_keys(manifest))
    return paths


def test_split_csv(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + CSV_TEXT.encode())
    rows = split_rows(manifest, 4)
    assert len(rows) == 4 and sum(rows) == 301 and all(rows)
    paths = _check_split(manifest, 4, rows)
    assert [p.name for p in paths] == [f"m.shard-0000{i}-of-00004.csv" for i in range(4)]
    lines = CSV_TEXT.splitlines(keepends=True)
    header = lines[0]
    written: list[str] = []
    for path in paths:
        text = path.read_text()
        assert text.startswith(header)  # the header heads every shard, without the BOM
        written += text[len(header) :].splitlines(keepends=True)
    # the rows as the file has them: quoting, the multi-line cell, empty cells
    quoted = 'quoted,"snow, heavily ""now""\n'
    assert quoted in written and written[written.index(quoted) + 1].startswith("and a second")
    original_rows = [line for line in lines[1:] if line.strip()]
    assert sorted(written) == sorted(original_rows[:-1])  # all but the duplicate


def test_split_jsonl(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    lines = [
        json.dumps({"id": f"j{i}", "prompt": f"p {i}", "image_urls": [f"https://x.test/{i}"]})
        for i in range(150)
    ] + [
        json.dumps({"prompt": f"no id {i}", "image_url": "https://x.test/a.png"}) for i in range(50)
    ]
    manifest.write_text("\n".join(lines[:100]) + "\n\n" + "\n".join(lines[100:]))  # no final \n
    rows = split_rows(manifest, 3)
    assert sum(rows) == 200
    paths = _check_split(manifest, 3, rows)
    written = [line for p in paths for line in p.read_text().splitlines()]
    assert sorted(written) == sorted(lines)  # each line as it was written


def test_split_keys_depend_on_the_jobs_endpoint_and_defaults(tmp_path: Path) -> None:
    """Rows without an id are keyed on the request: the job's settings make the same keys."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "prompt,image_urls\n" + "".join(f"p{i},https://x.test/{i}\n" for i in range(60))
    )
    endpoint, defaults = "fal-ai/other-edit", {"num_images": 2}
    rows = split_rows(manifest, 2, endpoint=endpoint, defaults=defaults)
    for index in range(2):
        path = shard_path(manifest, Shard(index, 2))
        check = ManifestCheck(path, endpoint=endpoint, defaults=defaults)
        keys = [item.key for item in check.items()]
        assert len(keys) == rows[index]
        assert all(shard_of(k, 2) == index for k in keys)
    # the same rows under the default endpoint are other requests, with other keys
    job_keys = {
        i.key for i in ManifestCheck(manifest, endpoint=endpoint, defaults=defaults).items()
    }
    assert job_keys.isdisjoint(_keys(manifest))


def test_split_into_another_folder(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(CSV_TEXT)
    out = tmp_path / "shards"
    rows = split_rows(manifest, 2, out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == [
        "m.shard-00000-of-00002.csv",
        "m.shard-00001-of-00002.csv",
    ]
    assert sum(rows) == 301


def test_split_leaves_nothing_when_the_manifest_is_invalid(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(CSV_TEXT + "bad,,https://x.test/b.png,not-a-seed\n")
    with pytest.raises(ManifestError):
        split_rows(manifest, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_split_refuses_yaml_and_bad_counts(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("items:\n  - {prompt: p, image_url: https://x.test/a.png}\n")
    with pytest.raises(ShardError, match="only CSV and JSONL manifests are split"):
        split_rows(manifest, 2)
    csv_file = tmp_path / "m.csv"
    csv_file.write_text(CSV_TEXT)
    with pytest.raises(ShardError, match="the count must be at least 1"):
        split_rows(csv_file, 0)


def test_split_streams_through_small_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny flush threshold, rows are appended in many passes and still all arrive."""
    monkeypatch.setattr("batch.job.shards._FLUSH_BYTES", 64)
    manifest = tmp_path / "m.csv"
    manifest.write_text(CSV_TEXT)
    rows = split_rows(manifest, 3)
    _check_split(manifest, 3, rows)


def test_a_split_that_leaves_a_shard_without_rows_is_refused(tmp_path: Path) -> None:
    """A run refuses an empty manifest (exit 2), which would fail a whole Kubernetes Job."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,prompt,image_urls\nonly,p,https://x.test/a.png\n")
    with pytest.raises(ShardError, match="without rows; split into fewer"):
        split_rows(manifest, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]  # nothing written
