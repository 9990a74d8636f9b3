"""Manifest problems: every bad row reported as `file:line: field: reason`, exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch.manifest import ManifestError, iter_items, resolve_image_ref, scan
from batch.manifest.fields import ImageRefError
from batch.manifest.localfiles import LocalFileError

DATA = Path(__file__).parent / "data" / "manifests"
ITEM = '"image_urls": ["https://img.test/a.png"]'


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def errors_of(name: str, **kwargs: object) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        scan(name, **kwargs)  # type: ignore[arg-type]
    return caught.value.errors


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return path.name


def test_every_bad_csv_row_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    with pytest.raises(ManifestError) as caught:
        scan("bad.csv")
    assert caught.value.errors == [
        "bad.csv:1: colour: unknown field",
        "bad.csv:3: prompt: Field required",
        "bad.csv:4: output_format: Input should be 'jpeg' or 'png'",
        "bad.csv:5: seed: Input should be a valid integer, unable to parse string as an integer",
        "bad.csv:6: image_urls[1]: not a valid URL or file path",
        "bad.csv:7: id: duplicate id 'ok1' (first at bad.csv:2) with a different request",
        "bad.csv:9: image: photos/cat.png: file not found",
        "bad.csv:10: id: must not contain '/', '\\' or NUL",
        "bad.csv:11: prompt: Field required",
        "bad.csv:11: seed: Input should be a valid integer, unable to parse string as an integer",
        "bad.csv:11: output_format: Input should be 'jpeg' or 'png'",
    ]
    assert caught.value.warnings == ["bad.csv:8: duplicate of bad.csv:2 (skipped)"]
    assert str(caught.value) == "\n".join(caught.value.errors)


def test_skip_invalid_returns_errors_and_counts_valid_items(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(DATA)
    result = scan("bad.csv", skip_invalid=True)
    assert (result.items, result.invalid_rows, result.duplicates) == (1, 8, 1)
    assert len(result.errors) == 11
    assert [i.key for i in iter_items("bad.csv")] == ["ok1"]


def test_jsonl_bad_rows(in_tmp: Path) -> None:
    text = "\n".join(
        [
            '{"prompt": "ok", ' + ITEM + "}",
            '{"prompt": "x", ' + ITEM + ', "colour": "red"}',
            '{"prompt": "x", ' + ITEM + ', "num_images": 9}',
            '{"prompt": "x", "image_urls": ["https://img.test/a.png", 7]}',
            '{"prompt": "x", "image_urls": []}',
            '{"prompt": "x", ' + ITEM + ', "image_size": "huge"}',
            '{"prompt": "x", ' + ITEM + ', "image_size": {"width": 0, "height": 10}}',
            '{"prompt": "x", ' + ITEM + ', "id": ""}',
            '{"prompt": "x", ' + ITEM + ', "id": ".."}',
            '{"prompt": "x", ' + ITEM + ', "id": "' + "x" * 129 + '"}',
            '{"prompt": "x", ' + ITEM + ",",
            "[1, 2]",
            '{"prompt": "x", "image_url": "https://img.test/a.png", "images": ["https://img.test/b.png"]}',
            '{"prompt": "", "image_urls": ["http://"]}',
        ]
    )
    assert errors_of(write(in_tmp / "m.jsonl", text + "\n")) == [
        "m.jsonl:2: colour: unknown field",
        "m.jsonl:3: num_images: Input should be less than or equal to 4",
        "m.jsonl:4: image_urls[1]: Input should be a valid string",
        "m.jsonl:5: image_urls: List should have at least 1 item after validation, not 0",
        "m.jsonl:6: image_size: Input should be 'square_hd', 'square', 'portrait_4_3', "
        "'portrait_16_9', 'landscape_4_3', 'landscape_16_9', WIDTHxHEIGHT or a mapping "
        "{width, height}",
        "m.jsonl:7: image_size.width: Input should be greater than 0",
        "m.jsonl:8: id: must not be empty",
        "m.jsonl:9: id: must not be '.' or '..'",
        "m.jsonl:10: id: must be at most 128 characters",
        "m.jsonl:11: invalid JSON: Expecting property name enclosed in double quotes (column 58)",
        "m.jsonl:12: expected a JSON object",
        "m.jsonl:13: images: conflicts with image_url",
        "m.jsonl:14: image_urls[0]: not a valid URL or file path",
        "m.jsonl:14: prompt: String should have at least 1 character",
    ]


def test_jsonl_invalid_utf8_is_reported_on_its_line(in_tmp: Path) -> None:
    good = ('{"prompt": "x", ' + ITEM + "}\n").encode()
    (in_tmp / "m.jsonl").write_bytes(good + b'{"prompt": "\xff"}\n' + good)
    assert errors_of("m.jsonl") == ["m.jsonl:2: not valid UTF-8 (byte 13 of the line)"]


def test_yaml_bad_items_and_sections(in_tmp: Path) -> None:
    text = """defaults:
  seed: many
  colour: red
items:
  - prompt: ok
    image_url: https://img.test/a.png
  - just a string
  - prompt: x
    prompt: y
    image_url: https://img.test/a.png
  - prompt: x
    image_url: https://img.test/a.png
    output_format: gif
    sync_mode: maybe
extra: 1
"""
    assert errors_of(write(in_tmp / "m.yaml", text)) == [
        "m.yaml:15: extra: unknown key (expected defaults, items or matrix)",
        "m.yaml:2: seed: Input should be a valid integer, unable to parse string as an integer",
        "m.yaml:3: colour: unknown field",
        "m.yaml:7: an item must be a mapping",
        "m.yaml:9: prompt: duplicate key",
        "m.yaml:11: sync_mode: Input should be a valid boolean, unable to interpret input",
        "m.yaml:11: output_format: Input should be 'jpeg' or 'png'",
    ]


def test_yaml_matrix_problems_are_reported_once_on_their_entry(in_tmp: Path) -> None:
    text = """matrix:
  prompts:
    - fine
    - {prompt: bad seed, seed: x}
    - {id: a/b, prompt: bad id}
    - {prompt: with images, image_url: https://img.test/a.png}
    - {seed: 1}
  images:
    - https://img.test/a.png
    - [https://img.test/b.png, not a url]
    - []
    - {id: s, url: https://img.test/c.png}
"""
    name = write(in_tmp / "m.yaml", text)
    with pytest.raises(ManifestError) as caught:
        scan(name)
    assert caught.value.errors == [
        "m.yaml:4: seed: Input should be a valid integer, unable to parse string as an integer",
        "m.yaml:5: id: must not contain '/', '\\' or NUL",
        "m.yaml:6: image_url: not allowed in a matrix prompt (images come from matrix.images)",
        "m.yaml:7: prompt: Field required",
        "m.yaml:10: image: not a url: file not found",
        "m.yaml:11: image_urls: an image set must be a URL or a non-empty list of URLs",
        "m.yaml:12: url: unknown key (expected id, urls or image_urls)",
        "m.yaml:12: image_urls: an image set must be a URL or a non-empty list of URLs",
    ]
    assert [i.key for i in iter_items(name)] == ["p0__i0"]


def test_yaml_matrix_needs_both_lists(in_tmp: Path) -> None:
    assert errors_of(write(in_tmp / "m.yaml", "matrix:\n  prompts: [a]\n")) == [
        "m.yaml:2: matrix.images: Field required"
    ]


def test_all_errors_are_reported_up_to_a_cap(in_tmp: Path) -> None:
    rows = "".join(f"row {i},https://img.test/a.png,x\n" for i in range(1005))
    with pytest.raises(ManifestError) as caught:
        scan(write(in_tmp / "m.csv", "prompt,image_urls,seed\n" + rows))
    assert len(caught.value.errors) == 1000
    assert caught.value.omitted == 5
    assert caught.value.errors[-1].startswith("m.csv:1001: seed: ")
    assert str(caught.value).endswith("\n… and 5 more errors")


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("missing.csv", None, "missing.csv: file not found"),
        (
            "m.txt",
            "x",
            "m.txt: unknown manifest format '.txt' (expected .yaml, .yml, .csv or .jsonl)",
        ),
        (
            "m.yaml",
            "items:\n  - prompt: [unclosed\n",
            "m.yaml:3: invalid YAML: expected ',' or ']', but got '<stream end>'",
        ),
        ("m.yaml", "- a\n- b\n", "m.yaml:1: expected a mapping with items: and/or matrix:"),
        (
            "m.yaml",
            "items:\n  - !!python/object:os.system {a: 1}\n",
            "m.yaml:2: invalid YAML: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object:os.system'",
        ),
        (
            "m.csv",
            "id,image_urls\na,https://img.test/a.png\n",
            "m.csv:1: no 'prompt' column (and no default prompt)",
        ),
        (
            "m.csv",
            'prompt,image_urls\n"unterminated,https://img.test/a.png\n',
            "m.csv:2: CSV error: unexpected end of data",
        ),
    ],
)
def test_file_level_problems(in_tmp: Path, name: str, content: str | None, error: str) -> None:
    if content is not None:
        write(in_tmp / name, content)
    assert errors_of(name) == [error]
    with pytest.raises(ManifestError):
        list(iter_items(name))


def test_csv_structure_problems(in_tmp: Path) -> None:
    text = "prompt,image_url,images,prompt,\nx,https://img.test/a.png,,,\ny,https://img.test/b.png,,,,extra\n"
    with pytest.raises(ManifestError) as caught:
        scan(write(in_tmp / "m.csv", text))
    assert caught.value.errors == [
        "m.csv:1: images: conflicts with image_url",
        "m.csv:1: prompt: duplicate column",
        "m.csv:3: row has 6 cells, the header has 5",
    ]
    assert caught.value.warnings == ["m.csv:1: column 5 has no name (ignored)"]


def test_invalid_job_defaults_are_refused_before_reading(in_tmp: Path) -> None:
    name = write(in_tmp / "m.jsonl", '{"prompt": "x", ' + ITEM + "}\n")
    assert errors_of(name, defaults={"seed": "x", "colour": 1}) == [
        "defaults: seed: Input should be a valid integer, unable to parse string as an integer",
        "defaults: colour: unknown field",
    ]


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("", "not a valid URL or file path"),
        ("http://", "not a valid URL or file path"),
        ("https://img.test/a b.png", "not a valid URL or file path"),
        ("ftp://img.test/a.png", "not a valid URL or file path"),
        ("data:image/png;base64", "not a valid data URI"),
        ("local:sha256:" + "0" * 64, "unknown local file reference (give local files by path)"),
    ],
)
def test_resolve_image_ref_refusals(ref: str, reason: str) -> None:
    with pytest.raises(ImageRefError) as caught:
        resolve_image_ref(ref, Path("/base"))
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    "ref",
    [
        "https://img.test/a.png",
        "HTTP://img.test:8080/a.png?x=1#y",
        "data:image/png;base64,iVBORw0KGgo=",
    ],
)
def test_resolve_image_ref_passes_urls(ref: str) -> None:
    assert resolve_image_ref(ref, Path("/base")) == [ref]


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("cat.png", "/base/cat.png: file not found"),
        ("/abs/cat.png", "/abs/cat.png: file not found"),
    ],
)
def test_resolve_image_ref_missing_files(ref: str, reason: str) -> None:
    """A local file that cannot be used is a LocalFileError naming it (reported at `image`)."""
    with pytest.raises(LocalFileError) as caught:
        resolve_image_ref(ref, Path("/base"))
    assert str(caught.value) == reason


def test_local_file_resolves_to_its_content_reference(tmp_path: Path) -> None:
    """A local image stands for its content: `local:sha256:<hex>` (uploaded before submit)."""
    import hashlib
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    (tmp_path / "cat.png").write_bytes(buf.getvalue())
    [ref] = resolve_image_ref("cat.png", tmp_path)
    assert ref == "local:sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()
    (tmp_path / "photos").mkdir()
    with pytest.raises(LocalFileError, match="no image files in this folder"):
        resolve_image_ref("photos", tmp_path)
