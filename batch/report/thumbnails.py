"""Thumbnails for the report: small JPEGs under ``<output>/thumbs/``, made once.

The report never inlines or hotlinks a full image: every picture on the page is a file beside
it of at most `THUMB_PX` on a side, so the page stays light and works offline.

- an output image ``images/a_0.png`` gets ``thumbs/images/a_0.png.jpg``, made again only when
  the image is newer than its thumbnail; an output already that small (by the ledger's record:
  at most `THUMB_PX` on a side and `SMALL_BYTES`, in a format browsers show) is its own
  thumbnail, as a thumbnail of it would be no smaller;
- a local input file (``local:sha256:<hex>`` in the request, found through the ledger's
  ``local_files``) gets ``thumbs/inputs/<sha256>.jpg``, named by content, so made once;
- a ``data:`` URI input gets ``thumbs/inputs/d-<sha256 of the URI>.jpg``;
- a remote input URL gets no thumbnail (the page must not fetch it): the card links to it.

`Thumbnailer` collects what a batch of items needs (`output`, `input`), then `make()` makes the
missing thumbnails in a few threads (Pillow decodes and resizes outside the GIL) and returns the
ones that could not be made, so the page shows a placeholder instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from batch.manifest.localfiles import local_sha
from batch.outputs.durable import TEMP_PREFIX
from batch.outputs.naming import check_output_path

THUMBS_DIR = "thumbs"
THUMB_PX = 256
THUMB_QUALITY = 80
THREADS = 4
MAX_INLINE_BYTES = 64 * 1024 * 1024
SMALL_BYTES = 128 * 1024  # an output this light and small is shown as it is
MAX_REMEMBERED_INPUTS = 4096
_SHOWN_AS_IS = (".png", ".jpg", ".jpeg", ".webp", ".gif")


@dataclass(frozen=True, slots=True)
class LocalInput:
    """A local input file as the ledger last saw it."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Media:
    """One picture on a card: its thumbnail and link (URLs relative to the report), a label."""

    thumb: str | None
    href: str | None
    label: str

    def as_list(self) -> list[str | None]:
        return [self.thumb, self.href, self.label]


@dataclass(frozen=True, slots=True)
class _Job:
    dest: Path
    source: Path | None = None  # a file
    inline: str | None = None  # a data: URI
    follow_mtime: bool = False  # remake when the source is newer than the thumbnail


def url_of(path: str) -> str:
    """A relative path as a URL path (each part percent-encoded)."""
    return urllib.parse.quote(path.replace(os.sep, "/"))


class Thumbnailer:
    """Plans and makes the thumbnails of one report (see the module docstring)."""

    def __init__(self, output_dir: Path, local_files: Mapping[str, LocalInput]) -> None:
        self.output_dir = output_dir
        self._root = str(output_dir)
        self.local_files = local_files
        self.made = 0
        self.failed = 0
        self._jobs: dict[Path, _Job] = {}
        self._failed: set[str] = set()
        self._inputs: dict[str, Media] = {}  # many cards often share an input image

    def output(
        self,
        rel_path: str,
        width: int | None = None,
        height: int | None = None,
        size: int | None = None,
    ) -> Media:
        """An output image, by its path relative to the output folder, with its recorded
        width, height and size in bytes (None when unknown)."""
        try:
            check_output_path(rel_path)
        except ValueError:
            return Media(None, None, "unsafe path")
        source = os.path.join(self._root, rel_path)  # strings, not Paths: once per card
        if not os.path.isfile(source):
            return Media(None, None, "missing")
        url = url_of(rel_path)
        if _small(rel_path, width, height, size):
            return Media(url, url, "output")
        thumb = f"{THUMBS_DIR}/{rel_path}.jpg"
        self._add(_Job(self.output_dir / thumb, source=Path(source), follow_mtime=True))
        return Media(url_of(thumb), url, "output")

    def input(self, url: str) -> Media:
        """An input image as the request names it (worked out once per report)."""
        media = self._inputs.get(url)
        if media is None:
            if len(self._inputs) >= MAX_REMEMBERED_INPUTS:
                self._inputs.clear()
            media = self._inputs[url] = self._input(url)
        return media

    def _input(self, url: str) -> Media:
        if url.startswith("data:"):
            digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
            thumb = f"{THUMBS_DIR}/inputs/d-{digest[:40]}.jpg"
            self._add(_Job(self.output_dir / thumb, inline=url))
            return Media(url_of(thumb), url_of(thumb), "inline")
        sha = local_sha(url)
        if sha is not None:
            return self._local(sha)
        if url.startswith(("http://", "https://")):
            return Media(None, url, "remote")
        return Media(None, None, "unknown")

    def _local(self, sha: str) -> Media:
        thumb = f"{THUMBS_DIR}/inputs/{sha}.jpg"
        known = self.local_files.get(sha)
        href = None if known is None else _relative_url(known.path, self.output_dir)
        dest = self.output_dir / thumb
        if dest.is_file():
            return Media(url_of(thumb), href, "local")
        if known is None or not _unchanged(known):
            return Media(None, href, "local file changed" if known else "local file")
        self._add(_Job(dest, source=Path(known.path)))
        return Media(url_of(thumb), href, "local")

    def _add(self, job: _Job) -> None:
        if job.dest in self._jobs:
            return
        if job.dest.is_file():
            if not job.follow_mtime or job.source is None:
                return
            try:
                if job.dest.stat().st_mtime_ns >= job.source.stat().st_mtime_ns:
                    return
            except OSError:
                pass
        self._jobs[job.dest] = job

    def make(self) -> set[str]:
        """Make the planned thumbnails; the URLs (as `Media.thumb`) of every thumbnail that
        failed so far in this report (a card may reuse an input's thumbnail planned earlier)."""
        jobs = list(self._jobs.values())
        self._jobs.clear()
        if not jobs:
            return self._failed
        with ThreadPoolExecutor(min(THREADS, len(jobs))) as pool:
            results = list(pool.map(_make, jobs))
        failed = {
            url_of(job.dest.relative_to(self.output_dir).as_posix())
            for job, ok in zip(jobs, results, strict=True)
            if not ok
        }
        self.made += len(jobs) - len(failed)
        self.failed += len(failed)
        self._failed |= failed
        return self._failed


def _small(rel_path: str, width: int | None, height: int | None, size: int | None) -> bool:
    if width is None or height is None or size is None:
        return False
    return (
        max(width, height) <= THUMB_PX
        and size <= SMALL_BYTES
        and rel_path.lower().endswith(_SHOWN_AS_IS)
    )


def _unchanged(known: LocalInput) -> bool:
    try:
        st = os.stat(known.path)
    except OSError:
        return False
    return st.st_size == known.size and st.st_mtime_ns == known.mtime_ns


def _relative_url(path: str, output_dir: Path) -> str:
    try:
        return url_of(os.path.relpath(path, output_dir))
    except ValueError:  # another drive
        return Path(path).as_uri()


def _decode_inline(uri: str) -> bytes | None:
    header, comma, body = uri[5:].partition(",")
    if not comma:
        return None
    if "base64" not in header.lower():
        return urllib.parse.unquote_to_bytes(body)
    if len(body) * 3 // 4 > MAX_INLINE_BYTES:
        return None
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _make(job: _Job) -> bool:
    """Make one thumbnail, written under a temporary name and renamed; False if impossible."""
    tmp = job.dest.with_name(f"{TEMP_PREFIX}{os.getpid()}-{job.dest.name}")
    try:
        if job.inline is not None:
            data = _decode_inline(job.inline)
            if data is None:
                return False
            source: Path | io.BytesIO = io.BytesIO(data)
        else:
            assert job.source is not None
            source = job.source
        with Image.open(source) as img:
            img.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))  # JPEG: decode at reduced scale
            small = ImageOps.exif_transpose(img)
            small.thumbnail((THUMB_PX, THUMB_PX))
            small = _flatten(small)
        job.dest.parent.mkdir(parents=True, exist_ok=True)
        small.save(tmp, "JPEG", quality=THUMB_QUALITY, optimize=True)
        os.replace(tmp, job.dest)
    except Exception:  # anything Pillow or the disk raises: no thumbnail, a placeholder
        tmp.unlink(missing_ok=True)
        return False
    return True


def _flatten(img: Image.Image) -> Image.Image:
    """RGB for JPEG: transparency over white."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def local_inputs(rows: Iterable[tuple[str, str, int, int]]) -> dict[str, LocalInput]:
    """sha256 → `LocalInput` from ``(sha256, path, size, mtime_ns)`` rows (the last wins)."""
    return {sha: LocalInput(path, size, mtime) for sha, path, size, mtime in rows}
