"""The fixes behind the hostile cases, one by one: bounds that match what is stored and sent,
output folders that cannot destroy inputs, globs that end, images refused on their headers,
a missing manifest that is an input error."""

from __future__ import annotations

import base64
import glob
import io
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from pydantic import ValidationError

from batch.cli import main
from batch.errors import ExitCode, InvalidInputError
from batch.job import JobError, JobSpec, load_job
from batch.manifest import ManifestError, scan
from batch.manifest.globwalk import glob_files
from batch.manifest.imagecheck import LocalFileError, inspect_image
from batch.manifest.localfiles import expand
from batch.manifest.pricing import data_uri_size
from batch.schema import PROMPT_MAX_CHARS, SEED_MAX, EditInput


def _png(size: tuple[int, int] = (16, 12), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (20, 90, 200)).save(buf, fmt)
    return buf.getvalue()


def _edit(**fields: Any) -> EditInput:
    return EditInput.model_validate(
        {"prompt": "p", "image_urls": ["https://x.test/a.png"], **fields}
    )


# 1. Values within what the ledger stores and fal accepts


def test_seed_is_a_signed_64_bit_integer_of_zero_or_more() -> None:
    assert _edit(seed=0).seed == 0 and _edit(seed=SEED_MAX).seed == 2**63 - 1
    for bad in (2**63, 2**64, -1):
        with pytest.raises(ValidationError):
            _edit(seed=bad)


def test_the_largest_seed_goes_through_a_run_into_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_bytes(_png())
    row = {"prompt": "x", "image_urls": ["a.png"], "seed": SEED_MAX}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    result = CliRunner().invoke(main, ["run", "m.jsonl", "--queue-url", "local"])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(tmp_path / "outputs" / "m" / "ledger.sqlite") as conn:
        assert conn.execute("SELECT state, seed FROM items").fetchall() == [("completed", SEED_MAX)]


def test_prompts_are_capped() -> None:
    assert len(_edit(prompt="p" * PROMPT_MAX_CHARS).prompt) == 10_000
    with pytest.raises(ValidationError):
        _edit(prompt="p" * (PROMPT_MAX_CHARS + 1))
    with pytest.raises(ValidationError):
        _edit(negative_prompt="n" * (PROMPT_MAX_CHARS + 1))


def test_tabs_and_newlines_stay_allowed_in_prompts(tmp_path: Path) -> None:
    row = {"prompt": "line one\n\tline two\r\n", "image_urls": ["https://x.test/a.png"]}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    assert scan(tmp_path / "m.jsonl").items == 1


def test_every_bad_row_is_reported_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [
        '{"prompt": "ok", "image_urls": ["https://x.test/a.png"]}',
        '{"prompt": "x", "image_urls": ["https://x.test/a.png"], "seed": ' + "9" * 5000 + "}",
        "[" * 100_000,
        '{"prompt": "a", "prompt": "b", "image_urls": ["https://x.test/a.png"]}',
        '{"prompt": "x\\u0000", "image_urls": ["https://x.test/a.png"], "num_images": true}',
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(ManifestError) as caught:
        scan("m.jsonl")
    assert caught.value.errors == [
        "m.jsonl:2: seed: number too large (5000 digits)",
        "m.jsonl:3: nested deeper than 10 levels",
        "m.jsonl:4: prompt: duplicate key",
        "m.jsonl:5: prompt: a control character (U+0000) at character 2 is not allowed",
        "m.jsonl:5: num_images: Input should be a number, not true or false",
    ]


# 2. The output folder


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The README's layout: jobs/, manifests/ (with results.jsonl as a manifest), outputs/."""
    for folder in ("jobs", "manifests", "home"):
        (tmp_path / folder).mkdir()
    (tmp_path / "manifests" / "results.jsonl").write_text(
        '{"prompt": "x", "image_urls": ["https://x.test/a.png"]}\n'
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_usual_layout_is_allowed(layout: Path) -> None:
    (layout / "jobs" / "r.yaml").write_text("manifest: ../manifests/results.jsonl\n")
    assert load_job(layout / "jobs" / "r.yaml").output == layout / "outputs" / "r"
    assert JobSpec.for_manifest("manifests/results.jsonl").output == layout / "outputs" / "results"
    for allowed in ("/tmp/firered-out", "/var/tmp/out", "~/runs/r", "manifests/out"):
        JobSpec.for_manifest("manifests/results.jsonl", output=allowed)


def test_a_manifest_run_where_it_lies_may_not_export_over_it(layout: Path) -> None:
    """A manifest named results.jsonl, run with its own folder as output, would be
    overwritten by the export."""
    os.chdir(layout / "manifests")
    with pytest.raises(JobError) as caught:
        JobSpec.for_manifest("results.jsonl", output=".")
    assert caught.value.errors == [
        "output: . is the manifest's folder (the run writes results.csv, results.jsonl,"
        " report.html and images/ there)"
    ]
    assert (layout / "manifests" / "results.jsonl").read_text().startswith('{"prompt"')


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("/", "/ is the root folder"),
        ("~", "home is your home folder (use a folder inside it)"),
        ("/etc", "/etc is inside /etc, a system folder"),
        ("/usr/share/x", "/usr/share/x is inside /usr/share, a system folder"),
        ("/var", "/var is a system folder"),
        ("/boot/x", "/boot/x is inside /boot, a system folder"),
        ("jobs", "jobs is the job file's folder (the run writes results.csv, results.jsonl,"
                 " report.html and images/ there)"),
    ],
)  # fmt: skip
def test_unsafe_outputs_are_refused_from_the_command_line_too(
    layout: Path, output: str, reason: str
) -> None:
    """``--output`` reaches the spec through with_overrides: the job file's folder is kept."""
    (layout / "jobs" / "r.yaml").write_text("manifest: ../manifests/results.jsonl\n")
    spec = load_job(layout / "jobs" / "r.yaml")
    with pytest.raises(JobError) as caught:
        spec.with_overrides(output=output)
    assert caught.value.errors == [f"output: {reason}"]


def test_an_output_that_holds_a_local_image_of_the_defaults_is_refused(layout: Path) -> None:
    (layout / "photos").mkdir()
    (layout / "photos" / "cat.png").write_bytes(_png())
    text = "manifest: ../manifests/results.jsonl\ndefaults: {image_url: ../photos/cat.png}\n"
    (layout / "jobs" / "r.yaml").write_text(text + "output: photos\n")
    with pytest.raises(JobError) as caught:
        load_job(layout / "jobs" / "r.yaml")
    assert caught.value.errors[0].startswith(
        "jobs/r.yaml:3: output: photos is the folder of cat.png"
    )


# 3. Globs end


def _tree(root: Path) -> None:
    for name in ("a/x.png", "a/b/y.png", "a/b/c/z.PNG", "a/.hidden/h.png", "a/.dot.png", "w.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


@pytest.mark.parametrize(
    "pattern", ["**/*.png", "a/**/*.png", "a/**", "*/*.png", "a/*/*.png", "a/b/**/*", "**/.*.png",
                "a/[bc]/*.png", "a/?/y.png", "nothing/**/*.png", "a/**/b/*.png"],
)  # fmt: skip
def test_glob_files_matches_as_glob_does_on_a_tree_without_loops(
    tmp_path: Path, pattern: str
) -> None:
    """Files only: glob also gives ``a/`` for ``a/**``, which expansion drops anyway."""
    _tree(tmp_path)
    found = glob.glob(pattern, root_dir=tmp_path, recursive=True)
    expected = {p for m in found if os.path.isfile(p := os.path.join(tmp_path, m))}
    assert {p for p in glob_files(pattern, str(tmp_path)) if os.path.isfile(p)} == expected
    absolute = str(tmp_path / pattern)
    expected = {p for p in glob.glob(absolute, recursive=True) if os.path.isfile(p)}
    assert {p for p in glob_files(absolute, "/unused") if os.path.isfile(p)} == expected


def test_a_glob_over_symbolic_link_loops_reads_each_folder_once(tmp_path: Path) -> None:
    _tree(tmp_path)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        (folder / "up").symlink_to("..")
        (folder / "root").symlink_to(tmp_path)
        (folder / "me").symlink_to(".")
    started = time.monotonic()
    files, many = expand("**/*.png", tmp_path)
    assert time.monotonic() - started < 5
    assert many and sorted(os.path.relpath(f, tmp_path) for f in files) == [
        "a/b/y.png", "a/x.png", "w.png"
    ]  # fmt: skip


def test_a_glob_reaches_a_folder_behind_a_link_once(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.png").write_bytes(b"x")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "link").symlink_to(tmp_path / "real")
    files, _ = expand("photos/**/*.png", tmp_path)
    assert files == [str(tmp_path / "photos" / "link" / "a.png")]


# 4. Images refused on their headers


def test_a_bomb_is_refused_before_any_pixel_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    wide, wider = _png((9000, 1)), _png((5000, 1))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(LocalFileError, match=r"x\.png: 9000×1 is 0\.0 megapixels, over the limit"):
        inspect_image(wide, "x.png", max_megapixels=0.005)
    guard = Image.MAX_IMAGE_PIXELS
    with pytest.raises(LocalFileError, match=r"y\.png: 0\.0 megapixels, over the limit of 0\.001 "):
        inspect_image(wider, "y.png", max_megapixels=0.001)  # past twice the limit: Pillow's guard
    assert guard == Image.MAX_IMAGE_PIXELS  # the guard is put back


def test_the_megapixel_limit_can_let_a_large_image_through() -> None:
    data = _png((3000, 2000), fmt="JPEG")
    assert inspect_image(data, "big.jpg", max_megapixels=6)[1:] == (3000, 2000)


def test_a_data_uri_is_measured_from_its_header_only(monkeypatch: pytest.MonkeyPatch) -> None:
    gif = _png((40000, 1), fmt="GIF")  # a GIF's size is in its header, not where a PNG's is
    huge = base64.b64encode(_png((20, 10), fmt="JPEG") + bytes(3 << 20)).decode()
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    uri = "data:image/gif;base64," + base64.b64encode(gif).decode()
    assert data_uri_size(uri) == (40000, 1)
    assert data_uri_size("data:image/jpeg;base64," + huge) == (20, 10)


# 5. A missing manifest


def test_run_of_a_job_whose_manifest_is_missing_exits_2(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "x.yaml").write_text("name: x\nmanifest: ../manifests/gone.csv\n")
    for command in (["run", "jobs/x.yaml", "--queue-url", "local"], ["validate", "jobs/x.yaml"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == ExitCode.INVALID, result.output
        assert result.stderr == "jobs/x.yaml:2: manifest: file not found: manifests/gone.csv\n"
    assert not (tmp_path / "outputs").exists()
    with pytest.raises(InvalidInputError):
        load_job(tmp_path / "jobs" / "x.yaml")
