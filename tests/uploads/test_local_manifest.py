"""Local files, folders and globs in manifests: what they resolve to, keys, and every bad file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from batch.job import JobSpec, load_job
from batch.manifest import ManifestError, iter_items, load, scan
from batch.manifest.localfiles import LOCAL_PREFIX, ImageLimits, LocalFiles

URL = "https://img.test/a.png"


def ref_of(path: Path) -> str:
    return LOCAL_PREFIX + hashlib.sha256(path.read_bytes()).hexdigest()


def items_of(path: Path, **kwargs) -> dict[str, list[str]]:
    return {i.key: i.payload["image_urls"] for i in iter_items(path, **kwargs)}


def errors_of(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        scan(path, **kwargs)
    return caught.value.errors


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_paths_are_relative_to_the_manifest_in_every_format(in_tmp: Path, images):
    """CSV, JSONL and YAML name the same file the same way: by content, from their folder."""
    cat = images.write(in_tmp / "m" / "img" / "cat.png")
    (in_tmp / "m" / "a.csv").write_text("id,prompt,image_urls\nc,snow,img/cat.png\n")
    (in_tmp / "m" / "a.jsonl").write_text(
        '{"id": "c", "prompt": "snow", "image_url": "img/cat.png"}\n'
    )
    (in_tmp / "m" / "a.yaml").write_text(
        "items:\n  - {id: c, prompt: snow, images: [img/cat.png]}\n"
    )
    os.chdir(in_tmp / "m" / "img")  # the current directory does not matter
    for name in ("a.csv", "a.jsonl", "a.yaml"):
        assert items_of(in_tmp / "m" / name) == {"c": [ref_of(cat)]}


def test_urls_and_data_uris_pass_through_untouched(in_tmp: Path, images):
    data_uri = "data:image/png;base64," + base64.b64encode(images.bytes()).decode()
    images.write(in_tmp / "cat.png")
    row = {"id": "x", "prompt": "p", "image_urls": [URL, data_uri, "cat.png"]}
    (in_tmp / "m.jsonl").write_text(json.dumps(row) + "\n")
    [urls] = items_of(in_tmp / "m.jsonl").values()
    assert urls == [URL, data_uri, ref_of(in_tmp / "cat.png")]


def test_globs_and_folders_expand_in_sorted_order(in_tmp: Path, images):
    """`*`, `**` and a folder (image files directly in it), sorted; other files are skipped."""
    for name in ("b.jpg", "a.jpg", "c.png", "sub/d.jpg", "sub/deeper/e.jpg", ".hidden.jpg"):
        images.write(in_tmp / "p" / name, color=(len(name) * 9, 1, 2), fmt="JPEG")
    (in_tmp / "p" / "notes.txt").write_text("not an image")
    rows = [
        {"id": "star", "image_urls": ["p/*.jpg"]},
        {"id": "deep", "image_urls": ["p/**/*.jpg"]},
        {"id": "folder", "image_urls": ["p"]},
        {"id": "mixed", "image_urls": [URL, "p/sub/"]},
    ]
    lines = [json.dumps({"prompt": "x", **r}) for r in rows]
    (in_tmp / "m.jsonl").write_text("\n".join(lines) + "\n")
    got = items_of(in_tmp / "m.jsonl")
    p = in_tmp / "p"
    assert got["star"] == [ref_of(p / "a.jpg"), ref_of(p / "b.jpg")]
    assert got["deep"] == [
        ref_of(p / n) for n in ("a.jpg", "b.jpg", "sub/d.jpg", "sub/deeper/e.jpg")
    ]
    assert got["folder"] == [ref_of(p / n) for n in ("a.jpg", "b.jpg", "c.png")]
    assert got["mixed"] == [URL, ref_of(p / "sub/d.jpg")]


def test_csv_cell_glob_makes_one_request_of_all_files(in_tmp: Path, images):
    images.folder(in_tmp, 3)
    (in_tmp / "m.csv").write_text("id,prompt,image_urls\nall,blend them,photos/*.jpg|" + URL + "\n")
    [urls] = items_of(in_tmp / "m.csv").values()
    assert len(urls) == 4 and urls[-1] == URL


def test_matrix_folder_is_one_image_set_per_file_keyed_by_content(in_tmp: Path, images):
    """`images: [photos/]` in a matrix: one item per file × prompt, ids from the content."""
    images.folder(in_tmp, 4)
    (in_tmp / "m.yaml").write_text(
        "matrix:\n"
        "  prompts: [{id: ink, prompt: ink wash}, {id: snow, prompt: make it snow}]\n"
        "  images: [photos/]\n"
    )
    got = items_of(in_tmp / "m.yaml")
    assert len(got) == 8
    for path in sorted((in_tmp / "photos").iterdir()):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        assert got[f"ink__{sha[:16]}"] == [LOCAL_PREFIX + sha]
        assert got[f"snow__{sha[:16]}"] == [LOCAL_PREFIX + sha]
    assert scan(in_tmp / "m.yaml").describe() == (
        "m.yaml: 8 items, 8 input images (4 local files) → 8 output images, 0.0 MP"
        " (+8 items at input size)"
    )


def test_identical_files_in_a_matrix_folder_are_one_image_set(in_tmp: Path, images):
    images.write(in_tmp / "p" / "a.png")
    images.write(in_tmp / "p" / "copy-of-a.png")
    (in_tmp / "m.yaml").write_text("matrix:\n  prompts: [x]\n  images: [p]\n")
    result = scan(in_tmp / "m.yaml")
    assert (result.items, result.duplicates, result.warnings) == (1, 0, ())


def test_renaming_a_file_keeps_every_key(in_tmp: Path, images):
    """Keys depend on the content: a renamed file (or moved folder) gives the same items."""
    images.folder(in_tmp, 3)
    (in_tmp / "m.yaml").write_text("matrix:\n  prompts: [x]\n  images: [photos/]\n")
    (in_tmp / "m.csv").write_text("prompt,image_urls\nsnow,photos/img01.jpg\n")
    before = {**items_of(in_tmp / "m.yaml"), **items_of(in_tmp / "m.csv")}
    os.rename(in_tmp / "photos" / "img01.jpg", in_tmp / "photos" / "renamed.jpg")
    (in_tmp / "m.csv").write_text("prompt,image_urls\nsnow,photos/renamed.jpg\n")
    after = {**items_of(in_tmp / "m.yaml"), **items_of(in_tmp / "m.csv")}
    assert after == before


def test_new_pixels_make_a_new_key(in_tmp: Path, images):
    path = images.write(in_tmp / "cat.png")
    (in_tmp / "m.csv").write_text("prompt,image_urls\nsnow,cat.png\n")
    [before] = items_of(in_tmp / "m.csv")
    images.write(path, color=(0, 0, 255))
    [after] = items_of(in_tmp / "m.csv")
    assert after != before


def test_each_file_is_read_once_per_scan_and_plan(in_tmp: Path, images, monkeypatch):
    """`load` (scan + iteration) over a matrix reads each file once; with an earlier run's
    records of the same files, none at all."""
    images.folder(in_tmp, 5)
    (in_tmp / "m.yaml").write_text(
        "matrix:\n  prompts: [a, b, c]\n  images: [photos/, photos/img00.jpg]\n"
        "items:\n  - {prompt: all, images: [photos/*.jpg]}\n"
    )
    opened: Counter[str] = Counter()

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str) and "photos" in args[0]:
            opened[args[0]] += 1

    sys.addaudithook(hook)  # audit hooks cannot be removed; this one only counts
    manifest = load(in_tmp / "m.yaml")
    assert len(list(manifest)) == 3 * 6 + 1
    photos = {str(p) for p in (in_tmp / "photos").iterdir()}
    assert set(opened) == photos and set(opened.values()) == {1}
    assert manifest.files is not None and manifest.files.reads == 5
    again = LocalFiles(known={f.path: f for f in manifest.files.files()})
    opened.clear()
    assert len(list(iter_items(in_tmp / "m.yaml", files=again))) == 19
    assert again.reads == 0 and not opened


def test_job_defaults_may_name_a_local_image(in_tmp: Path, images):
    """Relative to the job file; items without images take it (and its bytes are known)."""
    logo = images.write(in_tmp / "jobs" / "logo.png")
    (in_tmp / "m.csv").write_text("id,prompt\nx,put the logo on it\n")
    (in_tmp / "jobs" / "j.yaml").write_text(
        "manifest: ../m.csv\ndefaults: {image_urls: [logo.png]}\n"
    )
    spec = load_job(in_tmp / "jobs" / "j.yaml")
    files = LocalFiles(spec.image_limits)  # finds the defaults' file in the process's
    got = items_of(spec.manifest, defaults=spec.defaults, files=files)
    assert got == {"x": [ref_of(logo)]}
    assert [f.path for f in files.files()] == [str(logo)]


def test_job_settings_for_local_inputs(in_tmp: Path):
    (in_tmp / "m.csv").write_text("prompt,image_urls\nx,https://a.test/b.png\n")
    spec = JobSpec.for_manifest("m.csv", upload_max_age="2h", max_image_bytes=1000)
    assert (spec.upload_max_age, spec.image_limits) == (7200, ImageLimits(1000, 50.0))
    # rest_url unset: fal's, or a simulator's own URL (batch.pipeline.uploads.storage_url)
    assert (spec.inputs, spec.rest_url, spec.upload_concurrency) == ("upload", None, 4)
