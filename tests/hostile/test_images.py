"""Hostile local images: refused with exit 2 before anything is read in full or sent."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image


def png_header(width: int, height: int) -> bytes:
    """A small PNG file whose header declares ``width`` × ``height`` (its pixel data is one
    short row: decoding it would fail, or allocate the declared size first)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png(size: tuple[int, int] = (16, 16), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


def _file(data: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(data)

    return make


def _folder(path: Path) -> None:
    path.mkdir()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")  # stat'ed, never read: an endless file


def _truncated(path: Path) -> None:
    data = png((64, 64))
    path.write_bytes(data[: len(data) // 2])


# (id, how photos/x.png is made (None: not at all), the image entry, the message line)
CASES: list[tuple[str, Callable[[Path], None] | None, str, str]] = [
    ("not-an-image", _file(b"just some text\n"), "photos/x.png",
     r"m\.csv:2: image: photos/x\.png: not an image \(Pillow cannot identify it\)"),
    ("one-byte-file", _file(b"\x89"), "photos/x.png",
     r"m\.csv:2: image: photos/x\.png: not an image"),
    ("empty-file", _file(b""), "photos/x.png", r"m\.csv:2: image: photos/x\.png: file is empty"),
    ("truncated-png", _truncated, "photos/x.png",
     r"m\.csv:2: image: photos/x\.png: cannot decode \(image file is truncated"),
    ("missing-file", None, "photos/x.png", r"m\.csv:2: image: photos/x\.png: file not found"),
    ("folder-where-an-image-is-expected", _folder, "photos/x.png",
     r"m\.csv:2: image: photos/x\.png: no image files in this folder"),
    ("fifo", _fifo, "photos/x.png", r"m\.csv:2: image: photos/x\.png: not a regular file"),
    ("symlink-to-dev-zero", _to_dev_zero, "photos/x.png",
     r"m\.csv:2: image: photos/x\.png: not a regular file"),
    ("png-declaring-100000x100000", _file(png_header(100_000, 100_000)), "photos/x.png",
     r"m\.csv:2: image: photos/x\.png: 10000\.0 megapixels, over the limit of 50 "
     r"\(max_megapixels\)"),
    ("png-declaring-8000x8000", _file(png_header(8000, 8000)), "photos/x.png",
     r"m\.csv:2: image: photos/x\.png: 8000×8000 is 64\.0 megapixels, over the limit of 50"),
    ("png-declaring-0x0", _file(png_header(0, 0)), "photos/x.png",
     r"m\.csv:2: image: photos/x\.png: not an image"),
    ("tiff", _file(png(fmt="TIFF")), "photos/x.png",
     r"m\.csv:2: image: photos/x\.png: TIFF images are not accepted"),
    ("outside-through-dotdot", None, "../" * 30 + "etc/passwd",
     r"m\.csv:2: image: /etc/passwd: not an image"),
    ("path-of-5000-characters", None, "photos/" + "d/" * 2500 + "x.png",
     r"m\.csv:2: image_urls\[0\]: not a valid file path \(longer than 4096 characters\)"),
    ("control-character-in-path", None, "photos/x\x07.png",
     r"m\.csv:2: image_urls\[0\]: not a valid URL or file path"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "entry", "line"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_image(
    check: Callable[..., None],
    project: Path,
    make: Callable[[Path], None] | None,
    entry: str,
    line: str,
) -> None:
    (project / "photos").mkdir()
    if make is not None:
        make(project / "photos" / "x.png")
    (project / "m.csv").write_text(f"prompt,image_urls\nx,{entry}\n")
    check("m.csv", line)


def test_four_bombs_in_a_folder_are_refused_on_their_headers(
    check: Callable[..., None], project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four small PNGs declaring 13000×13000 (169 MP: 507 MB each once decoded): refused
    from their headers, none decoded."""
    (project / "photos").mkdir()
    for i in range(4):
        (project / "photos" / f"bomb{i}.png").write_bytes(png_header(13000 + i, 13000))
    decoded: list[object] = []
    load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or load(self))
    (project / "m.yaml").write_text("matrix:\n  prompts: [x]\n  images: [photos/]\n")
    check("m.yaml", r"m\.yaml:3: image: photos/bomb0\.png: 169\.0 megapixels, over the limit")
    assert not decoded


def test_a_glob_through_symbolic_link_loops_ends(check: Callable[..., None], project: Path) -> None:
    """Two links back up in every folder: glob.glob's walk doubles at each level."""
    (project / "photos" / "a").mkdir(parents=True)
    (project / "photos" / "a" / "up").symlink_to("..")
    (project / "photos" / "a" / "top").symlink_to("../..")
    (project / "photos" / "a" / "self").symlink_to(".")
    (project / "m.csv").write_text("prompt,image_urls\nx,photos/**/*.png\n")
    check("m.csv", r"m\.csv:2: image: photos/\*\*/\*\.png: no image files match this pattern")


def test_a_job_with_a_tiny_byte_limit(check: Callable[..., None], project: Path) -> None:
    (project / "photos").mkdir()
    (project / "photos" / "x.png").write_bytes(png())
    (project / "m.csv").write_text("prompt,image_urls\nx,photos/x.png\n")
    (project / "jobs").mkdir()
    (project / "jobs" / "x.yaml").write_text("manifest: ../m.csv\nmax_image_bytes: 10\n")
    check("jobs/x.yaml", r"m\.csv:2: image: photos/x\.png: \d+ bytes is over the limit of 10 bytes")


def test_a_bomb_in_a_job_files_defaults(check: Callable[..., None], project: Path) -> None:
    """Images in a job's ``defaults`` are checked before the job's limits are known: against
    the ceiling of 200 MP, still from the header."""
    (project / "jobs").mkdir()
    (project / "jobs" / "bomb.png").write_bytes(png_header(100_000, 100_000))
    (project / "m.csv").write_text("prompt\nx\n")
    (project / "jobs" / "x.yaml").write_text(
        "manifest: ../m.csv\ndefaults: {image_url: bomb.png}\n"
    )
    check("jobs/x.yaml", r"jobs/x\.yaml:2: defaults\.image: jobs/bomb\.png: 10000\.0 megapixels")
