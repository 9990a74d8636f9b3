"""Hostile manifests (CSV, JSONL, YAML): each is refused with exit 2 and its line."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from pathlib import Path

import pytest

URL = "https://img.test/a.png"
HEADER = "prompt,image_urls"
BIG = "1" * 5000  # past Python's int conversion limit (4300 digits)
DEEP = "[" * 100_000  # json.loads and PyYAML's composer recurse on each


def _row(**fields: str) -> str:
    """A JSONL row: prompt and image_urls, plus ``fields`` (raw JSON text)."""
    extra = "".join(f', "{k}": {v}' for k, v in fields.items())
    return f'{{"prompt": "x", "image_urls": ["{URL}"]{extra}}}\n'


def _item(**fields: str) -> str:
    """A YAML manifest of one item: prompt and image_urls, plus ``fields`` (raw YAML)."""
    extra = "".join(f", {k}: {v}" for k, v in fields.items())
    return f"items:\n  - {{prompt: x, image_urls: ['{URL}']{extra}}}\n"


# (id, file name, content (str: UTF-8, or bytes), a regular expression for the message line)
CASES: list[tuple[str, str, str | bytes, str]] = [
    # CSV
    ("csv-seed-2**63", "m.csv", f"{HEADER},seed\nx,{URL},{2**63}\n",
     r"m\.csv:2: seed: Input should be less than or equal to 9223372036854775807"),
    ("csv-seed-negative", "m.csv", f"{HEADER},seed\nx,{URL},-1\n",
     r"m\.csv:2: seed: Input should be greater than or equal to 0"),
    ("csv-seed-5000-digits", "m.csv", f"{HEADER},seed\nx,{URL},{BIG}\n",
     r"m\.csv:2: seed: Unable to parse input string as an integer, exceeded maximum size"),
    ("csv-empty-file", "m.csv", "", r"m\.csv:1: file is empty"),
    ("csv-bom-only", "m.csv", codecs.BOM_UTF8, r"m\.csv:1: file is empty"),
    ("csv-header-only", "m.csv", f"{HEADER}\n", r"m\.csv:1: no rows below the header"),
    ("csv-utf16-with-bom", "m.csv", f"{HEADER}\nx,{URL}\n".encode("utf-16"),
     r"m\.csv:1: the file is UTF-16, not UTF-8"),
    ("csv-invalid-utf8", "m.csv", f"{HEADER}\n".encode() + b"caf\xe9," + URL.encode() + b"\n",
     r"m\.csv:2: not valid UTF-8 \(byte 4 of the line\)"),
    ("csv-row-of-10000-cells", "m.csv", f"{HEADER}\nx,{URL}" + ",a" * 9998 + "\n",
     r"m\.csv:2: row has 10000 cells, the header has 2"),
    ("csv-1000000-character-cell", "m.csv", f"{HEADER}\n{'p' * 1_000_000},{URL}\n",
     r"m\.csv:2: CSV error: field larger than field limit"),
    ("csv-prompt-of-10001-characters", "m.csv", f"{HEADER}\n{'p' * 10_001},{URL}\n",
     r"m\.csv:2: prompt: String should have at most 10000 characters"),
    ("csv-nul-in-prompt", "m.csv", f"{HEADER}\na\0b,{URL}\n",
     r"m\.csv:2: prompt: a control character \(U\+0000\) at character 2 is not allowed"),
    ("csv-escape-in-prompt", "m.csv", f"{HEADER}\na\x1b[2Jb,{URL}\n",
     r"m\.csv:2: prompt: a control character \(U\+001B\)"),
    ("csv-image-size-0x0", "m.csv", f"{HEADER},image_size\nx,{URL},0x0\n",
     r"m\.csv:2: image_size\.width: Input should be greater than 0"),
    ("csv-image-size-100000x100000", "m.csv", f"{HEADER},image_size\nx,{URL},100000x100000\n",
     r"m\.csv:2: image_size\.width: Input should be less than or equal to 14142"),
    ("csv-image-size-5000-digits", "m.csv", f"{HEADER},image_size\nx,{URL},{BIG}x1\n",
     r"m\.csv:2: image_size\.width: Input should be less than or equal to 14142"),
    ("csv-image-size-deep-json", "m.csv",
     f'{HEADER},image_size\nx,{URL},"{{""width"": {DEEP}"\n',
     r"m\.csv:2: image_size: nested deeper than 10 levels"),
    ("csv-num-images-negative", "m.csv", f"{HEADER},num_images\nx,{URL},-1\n",
     r"m\.csv:2: num_images: Input should be greater than or equal to 1"),
    ("csv-num-images-true", "m.csv", f"{HEADER},num_images\nx,{URL},true\n",
     r"m\.csv:2: num_images: Input should be a valid integer"),
    ("csv-unknown-column", "m.csv", f"{HEADER},colour\nx,{URL},red\n",
     r"m\.csv:1: colour: unknown field"),
    ("csv-url-of-9000-characters", "m.csv", f"{HEADER}\nx,https://img.test/{'a' * 9000}\n",
     r"m\.csv:2: image_urls\[0\]: URL longer than 8192 characters"),
    ("csv-ftp-url", "m.csv", f"{HEADER}\nx,ftp://img.test/a.png\n",
     r"m\.csv:2: image_urls\[0\]: not a valid URL or file path"),
    # JSONL
    ("jsonl-seed-2**63", "m.jsonl", _row(seed=str(2**63)),
     r"m\.jsonl:1: seed: Input should be less than or equal to 9223372036854775807"),
    ("jsonl-5000-digit-integer", "m.jsonl", _row(seed=BIG),
     r"m\.jsonl:1: seed: number too large \(5000 digits\)"),
    ("jsonl-nested-100000-deep", "m.jsonl", f'{{"prompt": "x", "image_urls": {DEEP}\n',
     r"m\.jsonl:1: nested deeper than 10 levels"),
    ("jsonl-duplicate-key", "m.jsonl", _row(prompt='"y"'), r"m\.jsonl:1: prompt: duplicate key"),
    ("jsonl-nan", "m.jsonl", _row(guidance_scale="NaN"),
     r"m\.jsonl:1: guidance_scale: Input should be a finite number"),
    ("jsonl-infinity", "m.jsonl", _row(seed="-Infinity"),
     r"m\.jsonl:1: seed: Input should be a finite number"),
    ("jsonl-true-for-num-images", "m.jsonl", _row(num_images="true"),
     r"m\.jsonl:1: num_images: Input should be a number, not true or false"),
    ("jsonl-true-in-image-size", "m.jsonl", _row(image_size='{"width": true, "height": 8}'),
     r"m\.jsonl:1: image_size\.width: Input should be a number, not true or false"),
    ("jsonl-negative-image-size", "m.jsonl", _row(image_size='{"width": -5, "height": 8}'),
     r"m\.jsonl:1: image_size\.width: Input should be greater than 0"),
    ("jsonl-lone-surrogate-in-prompt", "m.jsonl", _row().replace('"x"', '"x\\ud800"'),
     r"m\.jsonl:1: prompt: a lone surrogate \(U\+D800\) at character 2 is not allowed"),
    ("jsonl-lone-surrogate-in-id", "m.jsonl", _row(id='"a\\udfff"'),
     r"m\.jsonl:1: id: must not contain control characters or lone surrogates"),
    ("jsonl-lone-surrogate-in-url", "m.jsonl", _row().replace("a.png", "\\ud800.png"),
     r"m\.jsonl:1: image_urls\[0\]: not a valid URL or file path"),
    ("jsonl-lone-surrogate-in-key", "m.jsonl", _row(**{"k\\ud800": "1"}),
     r"m\.jsonl:1: k\\ud800: unknown field"),
    ("jsonl-escape-sequence-key", "m.jsonl", _row(**{"\\u001b[31mred": "1"}),
     r"m\.jsonl:1: \\x1b\[31mred: unknown field"),
    ("jsonl-nul-in-prompt", "m.jsonl", _row().replace('"x"', '"a\\u0000"'),
     r"m\.jsonl:1: prompt: a control character \(U\+0000\) at character 2 is not allowed"),
    ("jsonl-1000000-character-prompt", "m.jsonl", _row().replace('"x"', f'"{"p" * 1_000_000}"'),
     r"m\.jsonl:1: prompt: String should have at most 10000 characters"),
    ("jsonl-empty-file", "m.jsonl", "\n\n", r"m\.jsonl:1: file is empty"),
    ("jsonl-not-an-object", "m.jsonl", "[1, 2]\n", r"m\.jsonl:1: expected a JSON object"),
    ("jsonl-invalid-utf8", "m.jsonl", b'{"prompt": "caf\xe9"}\n',
     r"m\.jsonl:1: not valid UTF-8 \(byte 16 of the line\)"),
    ("jsonl-truncated-row", "m.jsonl", '{"prompt": "x", "image_urls": ["',
     r"m\.jsonl:1: invalid JSON: Unterminated string"),
    ("jsonl-unknown-field", "m.jsonl", _row(strength="0.5"),
     r"m\.jsonl:1: strength: unknown field"),
    ("jsonl-string-for-prompt-list", "m.jsonl", _row().replace('"x"', '["x"]'),
     r"m\.jsonl:1: prompt: Input should be a valid string"),
    # YAML
    ("yaml-seed-2**63", "m.yaml", _item(seed=str(2**63)),
     r"m\.yaml:2: seed: Input should be less than or equal to 9223372036854775807"),
    ("yaml-5000-digit-integer", "m.yaml", _item(seed=BIG),
     r"m\.yaml:2: seed: number too large \(5000 digits\)"),
    ("yaml-nested-100000-deep", "m.yaml", f"items:\n  - {{prompt: x, image_urls: {DEEP}\n",
     r"m\.yaml:2: invalid YAML: nested deeper than 10 levels"),
    ("yaml-duplicate-key", "m.yaml", "items:\n  - prompt: x\n    prompt: y\n",
     r"m\.yaml:3: prompt: duplicate key"),
    ("yaml-duplicate-nested-key", "m.yaml", _item(image_size="{width: 8, width: 9, height: 8}"),
     r"m\.yaml:2: image_size\.width: duplicate key"),
    ("yaml-raw-nul", "m.yaml", _item().replace("x,", "a\0,"),
     r"m\.yaml:2: invalid YAML: character U\+0000 is not allowed"),
    ("yaml-escaped-nul", "m.yaml", _item().replace("x,", '"a\\0",'),
     r"m\.yaml:2: prompt: a control character \(U\+0000\) at character 2 is not allowed"),
    ("yaml-lone-surrogate", "m.yaml", _item().replace("x,", '"a\\ud800",'),
     r"m\.yaml:2: prompt: a lone surrogate \(U\+D800\)"),
    ("yaml-nan", "m.yaml", _item(guidance_scale=".nan"),
     r"m\.yaml:2: guidance_scale: Input should be a finite number"),
    ("yaml-impossible-date", "m.yaml", _item(seed="2024-13-45"),
     r"m\.yaml:2: seed: Input should be a valid integer"),
    ("yaml-true-for-seed", "m.yaml", _item(seed="yes"),
     r"m\.yaml:2: seed: Input should be a number, not true or false"),
    ("yaml-billion-laughs", "m.yaml",
     "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
     + "".join(
         f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
         for p, n in zip("abcdefgh", "bcdefghi", strict=True)
     )
     + f"items:\n  - {{prompt: *i, image_urls: ['{URL}']}}\n",
     r"m\.yaml:11: prompt: Input should be a valid string"),
    ("yaml-unknown-field", "m.yaml", _item(colour="red"), r"m\.yaml:2: colour: unknown field"),
    ("yaml-utf16", "m.yaml", _item().encode("utf-16"), r"m\.yaml:1: the file is UTF-16"),
    ("yaml-python-tag", "m.yaml", _item(seed="!!python/object/apply:os.system [ls]"),
     r"m\.yaml:2: invalid YAML: could not determine a constructor"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content", "line"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_manifest(
    check: Callable[..., None], project: Path, name: str, content: str | bytes, line: str
) -> None:
    path = project / name
    path.write_bytes(
        content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
    )
    check(name, line)


def test_an_empty_yaml_manifest_named_by_a_job_file(
    check: Callable[..., None], project: Path
) -> None:
    """A YAML file without ``items:`` is taken for a job file when run directly, so through
    a job file: an empty manifest is an error too."""
    (project / "m.yaml").write_text("# nothing yet\n")
    (project / "jobs").mkdir()
    (project / "jobs" / "x.yaml").write_text("manifest: ../m.yaml\n")
    check("jobs/x.yaml", r"m\.yaml:1: file is empty")
