"""Manifests: the three formats, items, keys, defaults, duplicates and counts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from batch.manifest import (
    EditItem,
    ManifestError,
    iter_items,
    load,
    request_hash,
    scan,
)
from batch.manifest.items import SeenKeys
from batch.schema import DEFAULT_ENDPOINT

DATA = Path(__file__).parent / "data" / "manifests"


@pytest.fixture
def data_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in the fixture folder, so that messages name files as `catalog.csv`."""
    monkeypatch.chdir(DATA)
    return DATA


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return path.name


def by_key(path: str, **kwargs: Any) -> dict[str, EditItem]:
    return {item.key: item for item in iter_items(path, **kwargs)}


def expected_key(payload: dict[str, object], endpoint: str = DEFAULT_ENDPOINT) -> str:
    canonical = json.dumps(
        {"endpoint": endpoint, "payload": payload},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return "h" + hashlib.sha256(canonical.encode()).hexdigest()[:20]


# --- YAML ---------------------------------------------------------------------------------


def test_yaml_items_get_defaults_aliases_and_their_line(data_dir: Path) -> None:
    items = list(iter_items("catalog.yaml"))
    first, second = items[0], items[1]
    assert first == EditItem(
        key="cat-blue",
        endpoint=DEFAULT_ENDPOINT,
        payload={
            "prompt": "make the cat blue",
            "image_urls": ["https://img.test/cat.png"],
            "num_images": 2,
            "output_format": "jpeg",
        },
        source="catalog.yaml:6",
        user_id="cat-blue",
    )
    assert second.source == "catalog.yaml:9"
    assert second.payload == {
        "prompt": "把背景换成海滩",
        "image_urls": ["https://img.test/a.png", "https://img.test/b.png"],
        "image_size": {"width": 1024, "height": 768},
        "num_images": 1,
        "output_format": "jpeg",
    }
    assert second.user_id is None
    assert second.key == expected_key(second.payload)


def test_yaml_matrix_is_every_prompt_times_every_image_set(data_dir: Path) -> None:
    items = list(iter_items("catalog.yaml"))[2:]
    assert [(i.key, i.source) for i in items] == [
        ("p0__i0", "catalog.yaml:15"),
        ("p0__i1", "catalog.yaml:15"),
        ("p0__shoe", "catalog.yaml:15"),
        ("night__i0", "catalog.yaml:16"),
        ("night__i1", "catalog.yaml:16"),
        ("night__shoe", "catalog.yaml:16"),
    ]
    night_i1 = items[4].payload
    assert night_i1 == {
        "prompt": "夜晚的城市",
        "image_urls": ["https://img.test/b.png", "https://img.test/c.png"],
        "seed": 3,
        "num_images": 2,
        "output_format": "jpeg",
    }


def test_matrix_ids_survive_appending_prompts_and_image_sets(in_tmp: Path) -> None:
    before = """matrix:
  prompts: [blue, red]
  images: [https://img.test/a.png, https://img.test/b.png]
"""
    after = """matrix:
  prompts: [blue, red, green]
  images: [https://img.test/a.png, https://img.test/b.png, https://img.test/c.png]
"""
    old = by_key(write(in_tmp / "m.yaml", before))
    new = by_key(write(in_tmp / "m.yaml", after))
    assert sorted(old) == ["p0__i0", "p0__i1", "p1__i0", "p1__i1"]
    assert len(new) == 9
    for key, item in old.items():
        assert new[key].payload == item.payload


def test_yaml_matrix_alone_and_image_set_forms(in_tmp: Path) -> None:
    text = """matrix:
  prompts:
    - {prompt: one}
  images:
    - https://img.test/a.png
    - [https://img.test/b.png]
    - {image_urls: https://img.test/c.png}
"""
    items = by_key(write(in_tmp / "m.yml", text))
    assert {k: v.payload["image_urls"] for k, v in items.items()} == {
        "p0__i0": ["https://img.test/a.png"],
        "p0__i1": ["https://img.test/b.png"],
        "p0__i2": ["https://img.test/c.png"],
    }


# --- CSV and JSONL --------------------------------------------------------------------------


def test_csv_rows_coerced_by_field_type_with_bom_quotes_and_unicode(data_dir: Path) -> None:
    a1, quoted, c3 = iter_items("catalog.csv")
    assert a1.payload == {
        "prompt": "make it blue, then green",
        "image_urls": ["https://img.test/a.png"],
        "image_size": "square_hd",
        "seed": 42,
        "guidance_scale": 4.5,
        "sync_mode": True,
        "num_images": 2,
    }
    assert a1.key == "a1"  # the BOM did not end up in the first column's name
    assert quoted.payload == {
        "prompt": 'line one\r\nline two, with "quotes"',
        "image_urls": ["https://img.test/b.png", "https://img.test/c.png"],
        "image_size": {"width": 1024, "height": 768},
    }
    assert (quoted.key, quoted.user_id) == (expected_key(quoted.payload), None)
    assert c3.payload["prompt"] == "给猫戴上帽子"
    assert c3.payload["image_size"] == {"width": 640, "height": 480}
    assert c3.payload["sync_mode"] is False


def test_csv_source_line_is_where_a_multiline_row_starts(data_dir: Path) -> None:
    assert [i.source for i in iter_items("catalog.csv")] == [
        "catalog.csv:2",
        "catalog.csv:3",
        "catalog.csv:5",
    ]


def test_csv_blank_lines_and_empty_rows_are_skipped_and_counted(in_tmp: Path) -> None:
    text = 'prompt,image_url\n\nA,https://img.test/a.png\n,\n\n"B\nb",https://img.test/b.png\nC,https://img.test/c.png\n'
    assert [i.source for i in iter_items(write(in_tmp / "m.csv", text))] == [
        "m.csv:3",
        "m.csv:6",
        "m.csv:8",
    ]


@pytest.mark.parametrize(
    ("cell", "value"),
    [("true", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("no", False)],
)
def test_csv_booleans(in_tmp: Path, cell: str, value: bool) -> None:
    name = write(
        in_tmp / "m.csv", f"prompt,image_urls,sync_mode\nx,https://img.test/a.png,{cell}\n"
    )
    (item,) = iter_items(name)
    assert item.payload["sync_mode"] is value


def test_csv_empty_cell_means_the_default(in_tmp: Path) -> None:
    name = write(in_tmp / "m.csv", "prompt,image_urls,seed\nx,https://img.test/a.png,\n")
    (item,) = iter_items(name, defaults={"seed": 5})
    assert item.payload["seed"] == 5


def test_csv_prompt_can_come_from_the_job_defaults(in_tmp: Path) -> None:
    name = write(in_tmp / "m.csv", "image_url\nhttps://img.test/a.png\nhttps://img.test/b.png\n")
    items = list(iter_items(name, defaults={"prompt": "重新上色"}))
    assert [i.payload["prompt"] for i in items] == ["重新上色", "重新上色"]


def test_jsonl_lines_are_request_bodies(data_dir: Path) -> None:
    j1, second = iter_items("catalog.jsonl")
    assert (j1.key, j1.source, j1.user_id) == ("j1", "catalog.jsonl:1", "j1")
    assert j1.payload == {
        "prompt": "make it blue",
        "image_urls": ["https://img.test/a.png"],
        "seed": 1,
    }
    assert second.source == "catalog.jsonl:3"  # the blank line 2 is skipped
    assert second.payload["prompt"] == "把天空变成紫色"


def test_jsonl_with_bom(in_tmp: Path) -> None:
    body = '{"prompt": "x", "image_urls": ["https://img.test/a.png"]}\n'
    (in_tmp / "m.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode())
    (item,) = iter_items("m.jsonl")
    assert item.payload["prompt"] == "x"


# --- keys, hashes, defaults ----------------------------------------------------------------


def test_request_hash_is_sha256_of_canonical_json() -> None:
    payload = {"prompt": "蓝色", "image_urls": ["https://img.test/a.png"], "seed": 1}
    canonical = '{"endpoint":"fal-ai/x","payload":{"image_urls":["https://img.test/a.png"],"prompt":"蓝色","seed":1}}'
    assert request_hash("fal-ai/x", payload) == hashlib.sha256(canonical.encode()).hexdigest()


def test_hash_key_depends_on_endpoint(in_tmp: Path) -> None:
    name = write(in_tmp / "m.jsonl", '{"prompt": "x", "image_urls": ["https://img.test/a.png"]}\n')
    (one,) = iter_items(name)
    (other,) = iter_items(name, endpoint="fal-ai/other-edit")
    assert other.endpoint == "fal-ai/other-edit"
    assert one.key != other.key
    assert other.key == expected_key(other.payload, "fal-ai/other-edit")
    assert other.request_hash == request_hash("fal-ai/other-edit", other.payload)


def test_defaults_precedence_job_then_manifest_then_row(in_tmp: Path) -> None:
    text = """defaults:
  seed: 2
  num_images: 2
items:
  - {id: row-seed, prompt: a, image_url: https://img.test/a.png, seed: 3}
  - {id: no-seed, prompt: b, image_url: https://img.test/a.png}
"""
    job_defaults = {"seed": 1, "num_images": 3, "negative_prompt": "模糊"}
    items = by_key(write(in_tmp / "m.yaml", text), defaults=job_defaults)
    assert items["row-seed"].payload == {
        "prompt": "a",
        "image_urls": ["https://img.test/a.png"],
        "seed": 3,
        "num_images": 2,
        "negative_prompt": "模糊",
    }
    assert items["no-seed"].payload["seed"] == 2


def test_payload_holds_only_what_was_set(in_tmp: Path) -> None:
    name = write(in_tmp / "m.jsonl", '{"prompt": "x", "image_urls": ["https://img.test/a.png"]}\n')
    (item,) = iter_items(name)
    assert item.payload == {"prompt": "x", "image_urls": ["https://img.test/a.png"]}


# --- duplicates ----------------------------------------------------------------------------


def test_identical_rows_collapse_with_a_warning(in_tmp: Path) -> None:
    row = "make it blue,https://img.test/a.png\n"
    name = write(
        in_tmp / "m.csv", "prompt,image_urls\n" + row + "other,https://img.test/b.png\n" + row
    )
    result = scan(name)
    assert (result.items, result.duplicates) == (2, 1)
    assert result.warnings == ("m.csv:4: duplicate of m.csv:2 (skipped)",)
    assert [i.source for i in iter_items(name)] == ["m.csv:2", "m.csv:3"]


def test_same_id_same_request_is_a_duplicate_not_an_error(in_tmp: Path) -> None:
    line = '{"id": "a", "prompt": "x", "image_urls": ["https://img.test/a.png"]}\n'
    result = scan(write(in_tmp / "m.jsonl", line + line))
    assert (result.items, result.warnings) == (1, ("m.jsonl:2: duplicate of m.jsonl:1 (skipped)",))


def test_same_id_different_request_is_an_error(in_tmp: Path) -> None:
    text = (
        '{"id": "a", "prompt": "x", "image_urls": ["https://img.test/a.png"]}\n'
        '{"id": "a", "prompt": "y", "image_urls": ["https://img.test/a.png"]}\n'
    )
    with pytest.raises(ManifestError) as caught:
        scan(write(in_tmp / "m.jsonl", text))
    assert caught.value.errors == [
        "m.jsonl:2: id: duplicate id 'a' (first at m.jsonl:1) with a different request"
    ]
    assert [i.payload["prompt"] for i in iter_items("m.jsonl")] == ["x"]


def test_seen_keys_finds_duplicates_across_growth() -> None:
    seen = SeenKeys(capacity=8)
    digests = {i: hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000)}
    for i in range(5000):
        assert seen.add(f"k{i}", digests[i], i + 1) is None
    assert len(seen) == 5000
    assert seen.add("k1234", digests[1234], 9999) == (True, 1235)
    assert seen.add("k1234", digests[1], 9999) == (False, 1235)
    assert seen.add("k5000", digests[1], 9999) is None


# --- counts ---------------------------------------------------------------------------------


def test_scan_counts_items_images_and_megapixels(data_dir: Path) -> None:
    result = scan("catalog.yaml")
    assert result.items == 8
    assert result.images == 1 + 2 + 2 * (1 + 2 + 1)
    assert result.output_images == 2 + 1 + 6 * 2
    assert result.output_megapixels == pytest.approx(1024 * 768 / 1e6)
    assert result.unknown_size_items == 7
    assert (result.errors, result.warnings, result.duplicates) == ((), (), 0)


def test_scan_megapixels_from_presets_sizes_and_num_images(data_dir: Path) -> None:
    result = scan("catalog.csv")
    expected = 2 * 1024 * 1024 + 1024 * 768 + 640 * 480
    assert result.output_megapixels == pytest.approx(expected / 1e6)
    assert (result.unknown_size_items, result.output_images, result.images) == (0, 4, 4)


def test_describe_is_one_line_for_people(data_dir: Path) -> None:
    assert scan("catalog.yaml").describe() == (
        "catalog.yaml: 8 items, 11 input images → 15 output images, 0.8 MP (+7 items at input size)"
    )
    result = scan("bad.csv", skip_invalid=True)
    assert result.describe() == (
        "bad.csv: 1 item, 1 input image → 1 output image, 0.0 MP (+1 item at input size), "
        "1 duplicate skipped, 8 invalid rows skipped"
    )


def test_empty_manifest_warns_no_items(in_tmp: Path) -> None:
    result = scan(write(in_tmp / "m.yaml", "items: []\n"))
    assert (result.items, result.warnings) == (0, ("m.yaml: no items",))


def test_load_scans_then_iterates(data_dir: Path) -> None:
    manifest = load("catalog.jsonl", defaults={"seed": 9})
    assert manifest.summary.items == 2
    assert [i.payload["seed"] for i in manifest] == [1, 9]
    assert [i.key for i in manifest] == [i.key for i in manifest]  # iterable again


def test_messages_name_absolute_paths_outside_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(DATA)
    path = tmp_path / "m.jsonl"
    path.write_text('{"prompt": "x", "image_urls": ["https://img.test/a.png"]}\n')
    (item,) = iter_items(path)
    assert item.source == f"{path}:1"


def test_yaml_with_bom_and_integer_ids(in_tmp: Path) -> None:
    text = "items:\n  - {id: 7, prompt: 蓝色, image_url: https://img.test/a.png}\n"
    (in_tmp / "m.yaml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (item,) = iter_items("m.yaml")
    assert (item.key, item.user_id, item.payload["prompt"]) == ("7", "7", "蓝色")
