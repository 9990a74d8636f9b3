"""Every kind of bad local image, reported as `manifest:line: image: reason` before anything is
uploaded or sent (exit 2)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import batch.manifest.localfiles as localfiles
from batch.cli import main
from batch.manifest import ManifestError, scan
from batch.manifest.localfiles import ImageLimits, LocalFiles


def png(size: tuple[int, int] = (20, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def encoded(fmt: str, size: tuple[int, int] = (20, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, fmt)
    return buf.getvalue()


def noisy_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((128, 128), 60).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def make(tmp: Path, name: str, data: bytes | None) -> None:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is not None:
        path.write_bytes(data)


BAD = [
    ("missing.png", None, "missing.png: file not found"),
    ("empty.png", b"", "empty.png: file is empty"),
    ("notes.png", b"just some text", "notes.png: not an image (Pillow cannot identify it)"),
    (
        "cut.jpg",
        noisy_jpeg()[:-3000],
        "cut.jpg: cannot decode (image file is truncated",
    ),
    ("cut.png", png((64, 64))[:-30], "cut.png: cannot decode ("),
    (
        "old.bmp",
        encoded("BMP"),
        "old.bmp: BMP images are not accepted (fal takes JPEG, PNG, WebP, GIF or AVIF)",
    ),
    (
        "scan.tiff",
        encoded("TIFF"),
        "scan.tiff: TIFF images are not accepted (fal takes JPEG, PNG, WebP, GIF or AVIF)",
    ),
    (
        "heavy.png",
        png() + b"\0" * 60_000,
        "heavy.png: 58.7 KiB is over the limit of 48.8 KiB (max_image_bytes)",
    ),
    (
        "wide.png",
        png((2000, 600)),
        "wide.png: 2000×600 is 1.2 megapixels, over the limit of 1 (max_megapixels)",
    ),
]
LIMITS = ImageLimits(max_bytes=50_000, max_megapixels=1)


@pytest.mark.parametrize(("name", "data", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_file_message(tmp_path: Path, monkeypatch, name: str, data: bytes | None, reason):
    monkeypatch.chdir(tmp_path)
    make(tmp_path, name, data)
    (tmp_path / "m.csv").write_text(f"prompt,image_urls\nfine,https://a.test/x.png\nbad,{name}\n")
    with pytest.raises(ManifestError) as caught:
        scan("m.csv", files=LocalFiles(LIMITS))
    [error] = caught.value.errors
    assert error.startswith(f"m.csv:3: image: {reason}")


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("photos/*.jpg", "photos/*.jpg: no image files match this pattern"),
        ("nothing-here", "nothing-here: no image files in this folder"),
        ("fifo.png", "fifo.png: not a regular file"),
        ("secret.png", "secret.png: cannot read (Permission denied)"),
    ],
)
def test_bad_entry_message(tmp_path: Path, monkeypatch, entry: str, reason: str):
    """An empty glob or folder, a special file, a file that cannot be read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(png())
    (tmp_path / "nothing-here").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "secret.png").write_bytes(png())
    real_open = open

    def refusing_open(path, *args, **kwargs):  # root reads anything: refuse by hand
        if str(path).endswith("secret.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(localfiles, "open", refusing_open, raising=False)
    (tmp_path / "m.yaml").write_text(f"items:\n  - {{prompt: x, images: ['{entry}']}}\n")
    with pytest.raises(ManifestError) as caught:
        scan("m.yaml")
    assert caught.value.errors == [f"m.yaml:2: image: {reason}"]


def test_matrix_entries_report_their_line_once(tmp_path: Path, monkeypatch):
    """A bad file in a matrix folder is reported on the entry's line, not once per prompt."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "good.png").write_bytes(png())
    (tmp_path / "p" / "bad.png").write_bytes(b"nope")
    (tmp_path / "m.yaml").write_text(
        "matrix:\n  prompts: [a, b, c]\n  images:\n    - p/\n    - q/*.png\n"
    )
    with pytest.raises(ManifestError) as caught:
        scan("m.yaml")
    assert caught.value.errors == [
        "m.yaml:4: image: p/bad.png: not an image (Pillow cannot identify it)",
        "m.yaml:5: image: q/*.png: no image files match this pattern",
    ]


def test_job_limits_apply_and_the_cli_exits_2(tmp_path: Path, monkeypatch):
    """`validate` and `run` check with the job's limits; nothing runs: exit 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "big.png").write_bytes(png((1200, 1000)))
    (tmp_path / "m.csv").write_text("prompt,image_urls\nx,big.png\n")
    (tmp_path / "job.yaml").write_text("manifest: m.csv\nqueue: local\nmax_megapixels: 1\n")
    expected = "m.csv:2: image: big.png: 1200×1000 is 1.2 megapixels, over the limit of 1"
    for args in (["validate", "job.yaml"], ["run", "job.yaml"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert expected in result.output
    assert not (tmp_path / "outputs" / "job" / "images").exists()
    result = CliRunner().invoke(main, ["run", "job.yaml", "--max-megapixels", "2"])
    assert result.exit_code == 0, result.output
