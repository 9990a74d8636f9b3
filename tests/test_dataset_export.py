"""Datasets of accepted outputs (`export --accepted --format ...`): each format read back.

The ledger comes from a real run against the simulator: one item on a local file, one on two
local files with two outputs (a key with a dot), one on a `data:` URI. Records made by hand
cover what a run here cannot make: remote input URLs, many records, big files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import png_bytes, png_uri, write_csv

import batch.outputs.dataset as dataset_mod
from batch.errors import ExitCode
from batch.ledger import Ledger
from batch.ledger.dataset import export_ledger_dataset, ledger_inputs, records_from_ledger
from batch.outputs.dataset import (
    FEATURES,
    FORMATS,
    DatasetError,
    DatasetRecord,
    EmptyDatasetError,
    export_dataset,
    sample_name,
)

REMOTE = "https://images.example.invalid/cat.png"  # never fetched: an export works offline


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]


def listed(folder: Path) -> list[str]:
    """What an export holds, but its `.firered-export` marker."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".firered-export")


@pytest.fixture
async def run_out(runner) -> Path:
    """The output folder of a finished run: keys `one` (a.png), `two.x` (a.png and b.png, two
    outputs) and `three` (a data: URI)."""
    tmp: Path = runner.tmp
    (tmp / "a.png").write_bytes(png_bytes(20, 10, (200, 0, 0)))
    (tmp / "b.png").write_bytes(png_bytes(10, 20, (0, 200, 0)))
    rows = [
        {"id": "one", "prompt": "make it blue", "image_urls": ["a.png"], "seed": 7},
        {"id": "two.x", "prompt": "merge them", "image_urls": ["a.png", "b.png"], "num_images": 2},
        {"id": "three", "prompt": "inline", "image_urls": [png_uri(12, 12, (1, 2, 3))]},
    ]
    write_csv(tmp / "m.csv", rows)
    await runner.start()
    summary = await runner.run(runner.spec(tmp / "m.csv"))
    assert summary.exit_code == ExitCode.OK, summary.text()
    return tmp / "out"


def export(out: Path, fmt: str, name: str | None = None, **kwargs: Any):
    with Ledger.open(out, create=False) as ledger:
        return export_ledger_dataset(ledger, out.parent / (name or f"ds-{fmt}"), fmt, **kwargs)


def hand_records(tmp: Path, n: int, *, size: int = 0, inputs: tuple[str, ...] = ()) -> list:
    """`n` records on PNG outputs in `tmp/outs` (padded to `size` bytes when given)."""
    (tmp / "outs").mkdir(exist_ok=True)
    records = []
    for i in range(n):
        path = tmp / "outs" / f"o{i}.png"
        data = png_bytes(8, 8, (i % 256, 0, 0))
        path.write_bytes(data + os.urandom(max(0, size - len(data))))
        records.append(DatasetRecord(f"k{i:03d}", f"edit {i}", inputs, path, seed=i))
    return records


def read_shards(dest: Path) -> list[list[tarfile.TarInfo]]:
    shards = []
    for path in sorted(dest.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            shards.append(tar.getmembers())
    return shards


# --- folder ----------------------------------------------------------------------------------


async def test_folder_is_an_imagefolder_whose_files_match_the_ledger(run_out: Path):
    """train/metadata.jsonl: one row per output, every row with the same keys, `file_name` and
    `input_image_<i>_file_name` naming files in train/ whose sha256 is the ledger's (outputs)
    or the input's own (inputs, each stored once, named by content)."""
    summary = export(run_out, "folder")
    root = run_out.parent / "ds-folder" / "train"
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert summary.records == len(rows) == 4 and summary.files == 1
    assert len({tuple(row) for row in rows}) == 1  # every row has every key
    assert list(rows[0])[:3] == ["file_name", "input_image_0_file_name", "input_image_1_file_name"]
    with Ledger.open(run_out, create=False) as ledger:
        for row in rows:
            [record] = [r for r in ledger.outputs(row["key"]) if r.index == row["output_index"]]
            assert sha(root / row["file_name"]) == record.sha256 == row["output_sha256"]
            assert sha(root / row["file_name"]) == sha(run_out / record.path)
    by_key = {(row["key"], row["output_index"]): row for row in rows}
    two = by_key[("two.x", 1)]
    assert two["instruction"] == "merge them" and json.loads(two["metadata"]) == {"num_images": 2}
    assert sha(root / two["input_image_0_file_name"]) == sha(run_out.parent / "a.png")
    assert sha(root / two["input_image_1_file_name"]) == sha(run_out.parent / "b.png")
    assert by_key[("one", 0)]["seed"] == 7 and by_key[("one", 0)]["input_image_1_file_name"] is None
    for row in rows:
        for column in ("input_image_0_file_name", "input_image_1_file_name"):
            if row[column]:
                assert Path(row[column]).stem == sha(root / row[column])
    assert len(list((root / "inputs").iterdir())) == 3  # a.png, b.png, the data: URI's bytes
    assert summary.inputs_embedded == 6 and summary.inputs_as_url == summary.inputs_missing == 0
    assert leftovers(run_out.parent) == []


async def test_folder_links_outputs_instead_of_copying(run_out: Path):
    """On the output folder's file system, the dataset's images are hard links: no copy."""
    export(run_out, "folder")
    row = json.loads((run_out.parent / "ds-folder/train/metadata.jsonl").read_text().split("\n")[0])
    linked = run_out.parent / "ds-folder" / "train" / row["file_name"]
    assert linked.stat().st_ino == (run_out / "images" / "one_0.png").stat().st_ino


async def test_folder_loads_with_hugging_face_datasets(run_out: Path):
    """`datasets.load_dataset("imagefolder", data_dir=...)` reads it as it is: the output as
    `image`, the inputs as `input_image_<i>` (skipped where `datasets` is not installed)."""
    datasets = pytest.importorskip("datasets")
    export(run_out, "folder")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(run_out.parent / "ds-folder"))
    train = loaded["train"]
    assert train.num_rows == 4
    assert {"image", "input_image_0", "input_image_1", "instruction"} <= set(train.column_names)
    one = next(row for row in train if row["key"] == "one")
    with Image.open(run_out / "images" / "one_0.png") as output:
        assert one["image"].size == output.size
    assert one["input_image_0"].size == (20, 10) and one["input_image_1"] is None


def test_folder_first_rows_give_every_column_a_value(tmp_path: Path):
    """Columns that take a value only late (a second input, a remote URL, a note) get one in
    the first rows, where `datasets` infers the column types; the rest keep their order."""
    records = hand_records(tmp_path, 6)
    (tmp_path / "in.png").write_bytes(png_bytes(4, 4))
    records[4] = DatasetRecord(
        "k004", "late", (str(tmp_path / "in.png"), REMOTE), records[4].output
    )
    records[5] = DatasetRecord("k005", "noted", (), records[5].output, note="crisp")
    summary = export_dataset(records, tmp_path / "ds", "folder")
    lines = (tmp_path / "ds" / "train" / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["key"] for row in rows] == ["k000", "k004", "k005", "k001", "k002", "k003"]
    assert rows[1]["input_image_0_file_name"].startswith("inputs/")
    assert rows[1]["input_image_1_file_name"] is None and rows[1]["input_urls"] == [None, REMOTE]
    assert rows[2]["note"] == "crisp" and rows[0]["note"] is None
    assert (summary.inputs_embedded, summary.inputs_as_url) == (1, 1)
    pa_json = pytest.importorskip("pyarrow.json")
    import io

    head = pa_json.read_json(io.BytesIO("\n".join(lines[:3]).encode()))
    assert str(head.schema.field("input_image_0_file_name").type) == "string"
    assert str(head.schema.field("input_urls").type) == "list<item: string>"


# --- jsonl -----------------------------------------------------------------------------------


async def test_jsonl_holds_paths_and_fields_and_copies_no_image(run_out: Path):
    """train.jsonl only: absolute paths of outputs and local inputs, the output's path relative
    to the dataset folder, the inputs as the request named them, every field."""
    summary = export(run_out, "jsonl")
    dest = run_out.parent / "ds-jsonl"
    assert listed(dest) == ["train.jsonl"] and summary.files == 1
    rows = [json.loads(line) for line in (dest / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert Path(row["output_path"]).is_absolute()
        assert (
            sha(Path(row["output_path"])) == sha(dest / row["output_file"]) == row["output_sha256"]
        )
    two = next(row for row in rows if row["key"] == "two.x")
    assert two["input_paths"] == [str(run_out.parent / "a.png"), str(run_out.parent / "b.png")]
    assert all(ref.startswith("local:sha256:") for ref in two["input_refs"])
    three = next(row for row in rows if row["key"] == "three")
    assert three["input_refs"][0].startswith("data:image/png") and three["input_paths"] == [None]
    assert set(two) >= {"instruction", "seed", "endpoint", "note", "reviewer", "metadata"}


async def test_reviews_give_each_output_its_note_and_reviewer(run_out: Path):
    """`reviews[(key, index)]` (e.g. `ledger.reviews.decisions()`) fills note and reviewer."""

    class Review:
        note = "sharp edges"
        reviewer = "ana"

    export(run_out, "jsonl", reviews={("two.x", 1): Review()})
    rows = [
        json.loads(x) for x in (run_out.parent / "ds-jsonl/train.jsonl").read_text().splitlines()
    ]
    noted = [(r["key"], r["output_index"], r["note"], r["reviewer"]) for r in rows if r["note"]]
    assert noted == [("two.x", 1, "sharp edges", "ana")]


# --- parquet ---------------------------------------------------------------------------------


async def test_parquet_rows_embed_the_images_as_datasets_image_structs(run_out: Path, monkeypatch):
    """Rows of {bytes, path} image structs (the inputs a list of them) holding the files' exact
    bytes, `datasets`' features in the schema metadata, row groups of ROW_GROUP_ROWS rows."""
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setattr(dataset_mod, "ROW_GROUP_ROWS", 3)
    summary = export(run_out, "parquet")
    [path] = [run_out.parent / "ds-parquet" / n for n in listed(run_out.parent / "ds-parquet")]
    assert path.name == "train-00000-of-00001.parquet" and summary.files == 1
    meta = pq.ParquetFile(path)
    assert meta.metadata.num_row_groups == 2  # 3 rows + 1
    table = meta.read()
    assert json.loads(table.schema.metadata[b"huggingface"])["info"]["features"] == FEATURES
    assert str(table.schema.field("image").type) == "struct<bytes: binary, path: string>"
    rows = {(r["key"], r["output_index"]): r for r in table.to_pylist()}
    assert len(rows) == 4
    with Ledger.open(run_out, create=False) as ledger:
        for (key, index), row in rows.items():
            [record] = [r for r in ledger.outputs(key) if r.index == index]
            assert row["image"]["bytes"] == (run_out / record.path).read_bytes()
    two = rows[("two.x", 0)]
    assert [i["bytes"] for i in two["input_images"]] == [
        (run_out.parent / name).read_bytes() for name in ("a.png", "b.png")
    ]
    assert two["input_urls"] == [None, None] and json.loads(two["metadata"]) == {"num_images": 2}


def test_parquet_files_split_at_shard_size_and_keep_remote_inputs_as_urls(tmp_path: Path):
    """shard_size 2, 5 rows: three files named -of-00003; a remote input is a null image and
    its URL, never fetched."""
    pq = pytest.importorskip("pyarrow.parquet")
    records = hand_records(tmp_path, 5, inputs=(REMOTE,))
    summary = export_dataset(records, tmp_path / "ds", "parquet", shard_size=2)
    names = listed(tmp_path / "ds")
    assert names == [f"train-0000{i}-of-00003.parquet" for i in range(3)] and summary.files == 3
    tables = [pq.read_table(tmp_path / "ds" / name) for name in names]
    assert [t.num_rows for t in tables] == [2, 2, 1]
    row = tables[2].to_pylist()[0]
    assert row["input_images"] == [None] and row["input_urls"] == [REMOTE]
    assert summary.inputs_as_url == 5


def test_parquet_holds_one_row_group_of_images_in_memory_at_most(tmp_path: Path, monkeypatch):
    """40 images of 256 KB (10 MB) with row groups of 4: the peak is a few row groups' worth."""
    pytest.importorskip("pyarrow.parquet")
    monkeypatch.setattr(dataset_mod, "ROW_GROUP_ROWS", 4)
    records = hand_records(tmp_path, 40, size=256 * 1024)
    tracemalloc.start()
    try:
        export_dataset(iter(records), tmp_path / "ds", "parquet")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_parquet_without_pyarrow_says_which_extra_to_install(tmp_path: Path, monkeypatch):
    real = dataset_mod.importlib.import_module

    def no_pyarrow(name: str, *args: Any) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(dataset_mod.importlib, "import_module", no_pyarrow)
    with pytest.raises(DatasetError, match=r"pip install 'firered-batch\[datasets\]'"):
        export_dataset(hand_records(tmp_path, 1), tmp_path / "ds", "parquet")
    assert not (tmp_path / "ds").exists()


# --- webdataset ------------------------------------------------------------------------------


async def test_webdataset_samples_group_by_basename(run_out: Path):
    """Each sample's members are together and share a basename without dots (`two.x` too):
    `<sample>.input_<i>.png`, `<sample>.output.png`, `<sample>.json`, with the files' bytes."""
    summary = export(run_out, "webdataset")
    [members] = read_shards(run_out.parent / "ds-webdataset")
    assert summary.files == 1
    groups: dict[str, list[str]] = {}
    for member in members:
        base, _, rest = member.name.partition(".")
        assert base not in groups or list(groups)[-1] == base  # a sample's members together
        groups.setdefault(base, []).append(rest)
    assert len(groups) == 4
    assert groups[sample_name("two.x", 1)] == ["input_0.png", "input_1.png", "output.png", "json"]
    assert groups[sample_name("one", 0)] == ["input_0.png", "output.png", "json"]
    with tarfile.open(run_out.parent / "ds-webdataset" / "shard-000000.tar") as tar:
        name = sample_name("two.x", 1)
        meta = json.load(tar.extractfile(f"{name}.json"))
        output = tar.extractfile(f"{name}.output.png").read()
        first_input = tar.extractfile(f"{name}.input_0.png").read()
    assert meta["key"] == "two.x" and meta["output_index"] == 1 and meta["instruction"]
    assert hashlib.sha256(output).hexdigest() == meta["output_sha256"]
    assert first_input == (run_out.parent / "a.png").read_bytes()


def test_webdataset_shards_hold_at_most_shard_size_samples(tmp_path: Path):
    records = hand_records(tmp_path, 5, inputs=(REMOTE,))
    summary = export_dataset(records, tmp_path / "ds", "webdataset", shard_size=2)
    shards = read_shards(tmp_path / "ds")
    assert [len(members) for members in shards] == [4, 4, 2] and summary.files == 3
    assert listed(tmp_path / "ds") == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    with tarfile.open(tmp_path / "ds" / "shard-000002.tar") as tar:
        meta = json.load(tar.extractfile(tar.getmembers()[-1]))
    assert meta["input_urls"] == [REMOTE]  # kept as its URL: no input member


def test_webdataset_shards_stay_under_shard_bytes(tmp_path: Path):
    """Shard files (headers, padding and end blocks counted) stay within shard_bytes; a sample
    larger than that goes alone in its own shard."""
    limit = 300 * 1024
    records = hand_records(tmp_path, 7, size=100 * 1024)
    records[0] = replace(records[0], key="k" * 150)  # a long name: a PAX header per member
    records.append(hand_records(tmp_path / "outs", 1, size=400 * 1024)[0])
    export_dataset(records, tmp_path / "ds", "webdataset", shard_bytes=limit)
    sizes = [p.stat().st_size for p in sorted((tmp_path / "ds").glob("shard-*.tar"))]
    shards = read_shards(tmp_path / "ds")
    assert sum(len(m) for m in shards) == 16
    assert shards[0][0].name == sample_name("k" * 150, 0) + ".output.png"
    assert all(size <= limit for size in sizes[:-1]) and sizes[-1] > limit
    assert [len(m) for m in shards] == [4, 4, 4, 2, 2]


def test_webdataset_streams_its_files(tmp_path: Path):
    records = hand_records(tmp_path, 30, size=256 * 1024)
    tracemalloc.start()
    try:
        export_dataset(iter(records), tmp_path / "ds", "webdataset")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024


# --- the ledger's records --------------------------------------------------------------------


async def test_records_from_ledger_are_the_asked_for_completed_outputs(run_out: Path):
    """Keys (all their outputs) and (key, index) pairs; unknown keys are skipped."""
    with Ledger.open(run_out, create=False) as ledger:
        everything = list(records_from_ledger(ledger))
        some = list(records_from_ledger(ledger, keys=["one", "nope"], outputs=[("two.x", 1)]))
    assert [(r.key, r.output_index) for r in everything] == [
        ("one", 0),
        ("three", 0),
        ("two.x", 0),
        ("two.x", 1),
    ]
    assert [(r.key, r.output_index) for r in some] == [("one", 0), ("two.x", 1)]
    one = everything[0]
    assert (one.instruction, one.seed, one.endpoint) == (
        "make it blue",
        7,
        "fal-ai/firered-image-edit",
    )
    assert one.output == run_out / "images" / "one_0.png" and one.inputs[0].startswith("local:")


async def test_a_changed_local_input_is_not_embedded(run_out: Path):
    """An input file changed since the run is not the input any more: not in the dataset."""
    (run_out.parent / "b.png").write_bytes(png_bytes(3, 3))
    with Ledger.open(run_out, create=False) as ledger:
        resolve = ledger_inputs(ledger)
        [ref_a, ref_b] = next(r for r in records_from_ledger(ledger, keys=["two.x"])).inputs
        assert resolve(ref_a).path == run_out.parent / "a.png"
        assert not resolve(ref_b).embeddable
    summary = export(run_out, "folder", keys=["two.x"])
    rows = (run_out.parent / "ds-folder/train/metadata.jsonl").read_text().splitlines()
    assert [json.loads(r)["input_image_1_file_name"] for r in rows] == [None, None]
    assert (summary.inputs_embedded, summary.inputs_missing) == (2, 2)


# --- whole or nothing ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_records_is_an_error_and_writes_nothing(tmp_path: Path, fmt: str):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    with pytest.raises(EmptyDatasetError, match="no records"):
        export_dataset([], tmp_path / "ds", fmt)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_output_fails_the_export_and_leaves_nothing(tmp_path: Path):
    records = hand_records(tmp_path, 3)
    records[2].output.unlink()

    def stream() -> Iterator[DatasetRecord]:
        yield from records

    with pytest.raises(DatasetError, match=r"o2\.png: output image of 'k002' is missing"):
        export_dataset(stream(), tmp_path / "ds", "folder")
    assert not (tmp_path / "ds").exists() and leftovers(tmp_path) == []


def test_an_existing_destination_is_kept_unless_it_is_an_export_overwritten(tmp_path: Path):
    records = hand_records(tmp_path, 2)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "mine.txt").write_text("keep")
    with pytest.raises(DatasetError, match="already exists"):
        export_dataset(records, tmp_path / "ds", "jsonl")
    with pytest.raises(DatasetError, match="not an earlier export"):  # never a user's folder
        export_dataset(records, tmp_path / "ds", "jsonl", overwrite=True)
    assert (tmp_path / "ds" / "mine.txt").read_text() == "keep"
    export_dataset(records, tmp_path / "ex", "jsonl")
    export_dataset(records, tmp_path / "ex", "jsonl", overwrite=True)  # an export: replaced
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == [".firered-export", "train.jsonl"]
    assert leftovers(tmp_path) == []


def test_sample_names_are_unique_and_have_no_dots():
    keys = ["a.b", "a_b", "a b", "é", "x" * 300, "k_1"]
    names = {sample_name(key, index) for key in keys for index in (0, 1, 10)}
    assert len(names) == 18 and not any("." in name for name in names)
    assert sample_name("cat-poster", 2) == "cat-poster_2"


def test_unknown_format_is_refused(tmp_path: Path):
    with pytest.raises(DatasetError, match="unknown dataset format 'csv'"):
        export_dataset(hand_records(tmp_path, 1), tmp_path / "ds", "csv")
