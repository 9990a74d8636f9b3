"""Local image files: paths, globs and folders → checked, content-addressed `LocalFile` records.

A manifest may name images on disk. Each one is read once per run (and not at all when an
earlier run saw the same file unchanged), hashed and checked, and stands in an item's payload as
``local:sha256:<hex>`` — so an item's request, and its key, depend on the file's content only.
Renaming a file changes nothing; changing its pixels makes a new request. The pipeline turns
the reference into a URL (an upload to fal's storage) just before the submit.

- `expand` turns one manifest entry into files: a file path, a folder (the image files directly
  in it) or a glob (``photos/*.jpg``, ``shots/**/*.png``); folders and globs take only files
  with an image extension (`IMAGE_SUFFIXES`), hidden files excluded, in sorted order.
- `LocalFiles` reads, hashes and checks files, caches them by (path, size, mtime, ctime) so
  no file is read twice, and finds them again by sha256. A check that fails raises
  `LocalFileError`, whose message names the file.

What is checked: the file exists, is a regular file and is readable, is not empty, is at most
`ImageLimits.max_bytes`, its format is one fal's image endpoints accept (`ACCEPTED_FORMATS` in
`batch.manifest.imagecheck`), its header says at most `ImageLimits.max_megapixels`, and
Pillow decodes it (JPEG at reduced scale, which still reads every byte). The size is checked on
the header, before any pixel is decoded: a small file that declares a huge image (a
decompression bomb) is refused without allocating it (`inspect_image`).

Globs never loop: ``**`` follows a symbolic link to a folder, but reads each real folder once
(`batch.manifest.globwalk`).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from batch.manifest.globwalk import glob_files
from batch.manifest.imagecheck import MAX_MEGAPIXELS_LIMIT as MAX_MEGAPIXELS_LIMIT
from batch.manifest.imagecheck import LocalFileError as LocalFileError
from batch.manifest.imagecheck import inspect_image, too_many_pixels
from batch.manifest.imagecheck import shown as shown

LOCAL_PREFIX = "local:sha256:"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".avif"})
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_MEGAPIXELS = 50.0
READ_THREADS = 8  # files read, hashed and decoded at a time when a folder or glob is expanded
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_GLOB_CHARS = frozenset("*?[")

StatKey = tuple[str, int, int, int]  # (absolute path, size, mtime_ns, ctime_ns)


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What a local image may weigh: bytes on disk and megapixels (width × height / 10⁶)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS


@dataclass(frozen=True, slots=True)
class LocalFile:
    """One checked image file: its content hash, where it was, and what it is."""

    sha256: str
    path: str  # absolute
    size: int
    mtime_ns: int
    ctime_ns: int
    content_type: str
    width: int
    height: int

    @property
    def ref(self) -> str:
        """The reference that stands for the file in a payload: ``local:sha256:<hex>``."""
        return LOCAL_PREFIX + self.sha256

    @property
    def stat_key(self) -> StatKey:
        return (self.path, self.size, self.mtime_ns, self.ctime_ns)

    @property
    def file_name(self) -> str:
        return os.path.basename(self.path)


def local_sha(ref: str) -> str | None:
    """The sha256 of a ``local:sha256:<hex>`` reference; None for anything else."""
    if ref.startswith(LOCAL_PREFIX) and _SHA_RE.fullmatch(ref[len(LOCAL_PREFIX) :]):
        return ref[len(LOCAL_PREFIX) :]
    return None


def is_pattern(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


def expand(ref: str, base_dir: Path) -> tuple[list[str], bool]:
    """The absolute paths one manifest entry names, and whether it named several (a folder or
    a glob: sorted, image extensions only). Raises `LocalFileError` when it names nothing."""
    text = os.path.expanduser(ref)
    path = os.path.abspath(os.path.join(base_dir, text))
    if os.path.isdir(path):
        with os.scandir(path) as entries:
            names = [e.name for e in entries if _is_image_name(e.name) and e.is_file()]
        files = [os.path.join(path, n) for n in sorted(names)]
        if not files:
            raise LocalFileError(f"{shown(path)}: no image files in this folder")
        return files, True
    if os.path.lexists(path) or not is_pattern(text):
        return [path], False
    found = glob_files(text, os.fspath(base_dir))
    files = sorted(os.path.abspath(f) for f in found if _is_image_name(f) and os.path.isfile(f))
    if not files:
        raise LocalFileError(f"{ref}: no image files match this pattern")
    return files, True


def _is_image_name(name: str) -> bool:
    base = os.path.basename(name)
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_SUFFIXES


class LocalFiles:
    """The local images of one run (or one scan): read once each, found again by sha256.

    ``limits`` None checks no size or megapixel limit (the process-wide `default_files`, which
    serves job ``defaults`` resolved before the limits are known). ``known`` maps absolute
    paths to records of an earlier run (the ledger's); a file whose size, mtime and ctime still
    match is not read again. ``parent`` (default: `default_files`) is asked for a sha256 this
    registry does not know.
    ``reads`` counts the files read.
    """

    def __init__(
        self,
        limits: ImageLimits | None = ImageLimits(),
        *,
        known: Mapping[str, LocalFile] | None = None,
        parent: LocalFiles | None = None,
    ) -> None:
        self.limits = limits
        self.reads = 0
        self._known = known or {}
        self._parent = parent
        self._by_stat: dict[StatKey, LocalFile | str] = {}
        self._by_sha: dict[str, LocalFile] = {}

    def __len__(self) -> int:
        return len(self._by_sha)

    def __repr__(self) -> str:
        return f"LocalFiles(files={len(self)}, reads={self.reads}, limits={self.limits})"

    def files(self) -> list[LocalFile]:
        """Every file resolved or looked up here, one per path."""
        found = {f.path: f for f in self._by_stat.values() if isinstance(f, LocalFile)}
        for file in self._by_sha.values():
            found.setdefault(file.path, file)
        return list(found.values())

    def lookup(self, sha256: str) -> LocalFile | None:
        """The file with this content (checked against this registry's limits), or None."""
        found = self._by_sha.get(sha256)
        parent = self._parent if self._parent is not None else default_files()
        if found is None and parent is not self:
            found = parent.lookup(sha256)
            if found is not None:
                self._by_sha[sha256] = found
        if found is not None:
            self.check_limits(found)
        return found

    def resolve(self, path: str) -> LocalFile:
        """The checked record of the file at absolute ``path``; `LocalFileError` if unusable."""
        key = _stat_key(path)
        cached = self._cached(key)
        if cached is None:
            if self._over_size(key):
                raise LocalFileError(self._too_big(path, key[1]))
            cached, opened = _load(key, self.limits)
            self.reads += opened
        self._by_stat[key] = cached
        if isinstance(cached, str):
            raise LocalFileError(cached)
        self._by_sha.setdefault(cached.sha256, cached)
        self.check_limits(cached)
        return cached

    def prefetch(self, paths: Sequence[str]) -> None:
        """Read the files of ``paths`` not read yet, `READ_THREADS` at a time (hashing and
        decoding release the GIL). Problems are left for `resolve` to report."""
        todo: list[StatKey] = []
        for path in paths:
            try:
                key = _stat_key(path)
            except LocalFileError:
                continue
            if self._cached(key) is None and not self._over_size(key):
                todo.append(key)
        threads = min(READ_THREADS, os.cpu_count() or 1, len(todo))
        if threads < 2:
            return
        size = max(1, min(64, len(todo) // (threads * 4)))  # few tasks: thread hand-offs cost
        batches = [todo[i : i + size] for i in range(0, len(todo), size)]
        with ThreadPoolExecutor(threads) as pool:
            for batch in pool.map(_load_all, batches, [self.limits] * len(batches)):
                for key, (result, opened) in batch:
                    self._by_stat[key] = result
                    self.reads += opened

    def _cached(self, key: StatKey) -> LocalFile | str | None:
        cached = self._by_stat.get(key)
        if cached is None:
            known = self._known.get(key[0])
            cached = known if known is not None and known.stat_key == key else None
        return cached

    def _over_size(self, key: StatKey) -> bool:
        return self.limits is not None and key[1] > self.limits.max_bytes

    def check_limits(self, file: LocalFile) -> None:
        if self.limits is None:
            return
        if file.size > self.limits.max_bytes:
            raise LocalFileError(self._too_big(file.path, file.size))
        if file.width * file.height > self.limits.max_megapixels * 1e6:
            raise LocalFileError(
                too_many_pixels(file.path, file.width, file.height, self.limits.max_megapixels)
            )

    def _too_big(self, path: str, size: int) -> str:
        assert self.limits is not None
        return (
            f"{shown(path)}: {_mib(size)} is over the limit of {_mib(self.limits.max_bytes)}"
            " (max_image_bytes)"
        )


def _stat_key(path: str) -> StatKey:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise LocalFileError(f"{shown(path)}: file not found") from None
    except OSError as exc:
        raise LocalFileError(f"{shown(path)}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise LocalFileError(f"{shown(path)}: not a regular file")
    return (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _load_all(
    keys: list[StatKey], limits: ImageLimits | None
) -> list[tuple[StatKey, tuple[LocalFile | str, bool]]]:
    return [(key, _load(key, limits)) for key in keys]


def _read(path: str, max_bytes: int | None) -> bytes:
    """The file's bytes, at most ``max_bytes + 1`` (it may have grown since it was stat'ed),
    checked again to be a regular file once open."""
    with open(path, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise LocalFileError(f"{shown(path)}: not a regular file")
        return fh.read() if max_bytes is None else fh.read(max_bytes + 1)


def _load(key: StatKey, limits: ImageLimits | None = None) -> tuple[LocalFile | str, bool]:
    """Read, hash and check one file: its record or the problem, and whether it was opened.
    Safe to run in threads."""
    path = key[0]
    max_bytes = None if limits is None else limits.max_bytes
    try:
        data = _read(path, max_bytes)
    except LocalFileError as exc:
        return str(exc), False
    except OSError as exc:
        return f"{shown(path)}: cannot read ({exc.strerror})", False
    if not data:
        return f"{shown(path)}: file is empty", True
    if max_bytes is not None and len(data) > max_bytes:  # it grew since it was stat'ed
        return (
            f"{shown(path)}: more than {_mib(max_bytes)}, over the limit (max_image_bytes)",
            True,
        )
    megapixels = MAX_MEGAPIXELS_LIMIT if limits is None else limits.max_megapixels
    try:
        content_type, width, height = inspect_image(data, path, megapixels)
    except LocalFileError as exc:
        return str(exc), True
    sha = hashlib.sha256(data).hexdigest()
    return LocalFile(sha, path, len(data), key[2], key[3], content_type, width, height), True


def _mib(size: int) -> str:
    """A size for people: ``12.3 MiB``, ``58.6 KiB`` or ``512 bytes``."""
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    if size >= 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size} bytes"


_DEFAULT = LocalFiles(limits=None)


def default_files() -> LocalFiles:
    """The process-wide registry used when none is given (job ``defaults``, ad-hoc calls)."""
    return _DEFAULT
