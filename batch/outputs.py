"""Output files: safe names, verified downloads, atomic writes, integrity checks.

A file reaches its final name only whole: it is downloaded and hashed, checked with Pillow (a
PNG by its chunk checksums, other formats decoded) and against what the result said (width,
height, content type), then written through `batch.durable` (temporary name, made durable,
renamed; DESIGN invariant 1). Files downloaded at the same time are published as a batch, in
a thread: one durability flush and one folder fsync for all of them (`Publisher`). Any failure
removes the temporary file; `cleanup_temp_files` removes the ones a killed process left behind.

Errors are one type, `DownloadError`, with `transient` saying whether trying again may help
(connection errors, timeouts, truncated bodies, 408/429/5xx) or not (other 4xx, corrupt or
mismatching content, too large); the caller decides how often to try. URLs in messages lose their
query string, and data URIs their payload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import os
import string
import unicodedata
import urllib.parse
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from batch.durable import (
    TEMP_PREFIX,
    fsync_dir,
    sync_files,
    temp_path,
    write_unsynced,
)

IMAGES_DIR = "images"
DEFAULT_TEMPLATE = "{key}-{index}.{ext}"
# Fields a job's template may use (`validate_template`); `safe_name` takes any it is given.
TEMPLATE_FIELDS = frozenset({"key", "index", "ext", "seed", "request_id", "width", "height"})
# Room for the `.tmp-<16 hex>-` prefix within the usual 255-byte file-name limit.
MAX_NAME_BYTES = 200
_CHUNK = 64 * 1024
# Above this many pixels a non-JPEG image is checked by its own checksums only, not decoded.
_MAX_DECODE_PIXELS = 64_000_000
# Separators, characters Windows forbids, and bidi controls that disguise an extension.
_UNSAFE_CHARS = frozenset('/\\<>:"|?*\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069')
_UNSAFE_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")  # control, surrogate, line/paragraph separator
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class DownloadError(Exception):
    """A download failed. `transient`: trying again later may succeed."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.status = status

    def __repr__(self) -> str:
        return f"DownloadError({self.message!r}, transient={self.transient}, status={self.status})"


@dataclass(frozen=True)
class OutputRecord:
    """One output file as the ledger records it; `path` is relative to the output folder."""

    index: int
    path: str
    url: str
    bytes: int
    sha256: str
    width: int | None
    height: int | None
    content_type: str | None


@dataclass(frozen=True)
class DownloadedFile:
    """What `download_image` wrote: the final absolute path and what was verified."""

    path: Path
    url: str
    bytes: int
    sha256: str
    width: int
    height: int
    content_type: str

    def to_record(self, index: int, output_dir: Path) -> OutputRecord:
        """The ledger's record, with the path made relative to `output_dir`."""
        try:
            rel = self.path.relative_to(output_dir)  # as the pipeline names it: no disk access
        except ValueError:
            rel = self.path.resolve().relative_to(output_dir.resolve())
        return OutputRecord(
            index=index,
            path=rel.as_posix(),
            url=self.url,
            bytes=self.bytes,
            sha256=self.sha256,
            width=self.width,
            height=self.height,
            content_type=self.content_type,
        )


@dataclass(frozen=True)
class Problem:
    """A file that does not match its ledger record (`verify_outputs`)."""

    path: str
    kind: str  # "unsafe_path" | "missing" | "size" | "sha256"
    detail: str


# --- names -------------------------------------------------------------------------------------


def template_fields(template: str) -> set[str]:
    """The field names a template uses; ValueError for attribute/index access or bad syntax."""
    names: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad file-name template {template!r}: {exc}") from None
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(
                f"bad file-name template {template!r}: field {field!r} must be a plain name"
            )
        names.add(field)
        if spec:
            names |= template_fields(spec)
    return names


def validate_template(template: str, allowed: Iterable[str] = TEMPLATE_FIELDS) -> None:
    """Check a job's template up front: only known fields, and `{index}` for unique names."""
    allowed = set(allowed)
    used = template_fields(template)
    unknown = sorted(used - allowed)
    if unknown:
        raise ValueError(
            f"unknown field {', '.join(map(repr, unknown))} in file-name template {template!r};"
            f" known fields: {', '.join(sorted(allowed))}"
        )
    if "index" not in used:
        raise ValueError(f"file-name template {template!r} must contain {{index}}")


def safe_name(template: str, *, max_bytes: int = MAX_NAME_BYTES, **fields: Any) -> str:
    """Render a file-name template and make the result a safe single file name.

    The result has no path separators, no `..`, no control characters, no leading dot, is NFC
    normalised and at most `max_bytes` UTF-8 bytes (the extension is kept). When sanitising
    changed the rendered name, or it had to be shortened, a short hash of the rendered name is
    appended so that different inputs stay different names. The template must use `{index}`.
    """
    used = template_fields(template)
    unknown = sorted(used - fields.keys())
    if unknown:
        raise ValueError(
            f"unknown field {', '.join(map(repr, unknown))} in file-name template {template!r};"
            f" available: {', '.join(sorted(fields))}"
        )
    if "index" not in used:
        raise ValueError(f"file-name template {template!r} must contain {{index}}")
    rendered = template.format_map(fields)
    name = _sanitise(rendered)
    tag = hashlib.sha256(rendered.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    if name != rendered:
        name = _add_suffix(name, f"~{tag}")
    if len(name.encode()) > max_bytes:
        name = _shorten(name, max_bytes, f"~{tag}")
    return name


def _sanitise(raw: str) -> str:
    text = unicodedata.normalize("NFC", raw)
    chars = [
        "_" if ch in _UNSAFE_CHARS or unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
        for ch in text
    ]
    text = "".join(chars)
    while ".." in text:
        text = text.replace("..", ".")
    text = text.lstrip(". ").rstrip(". ")
    return text or "_"


def _split_ext(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 16:
        return name, ""
    return stem, "." + ext


def _add_suffix(name: str, suffix: str) -> str:
    stem, ext = _split_ext(name)
    return f"{stem}{suffix}{ext}"


def _shorten(name: str, max_bytes: int, suffix: str) -> str:
    stem, ext = _split_ext(name)
    stem = stem.removesuffix(suffix)
    room = max_bytes - len(ext.encode()) - len(suffix.encode())
    if room < 1:
        raise ValueError(f"max_bytes={max_bytes} leaves no room for a name")
    cut = stem.encode()[:room].decode("utf-8", "ignore").rstrip(". ")
    return f"{cut or '_'}{suffix}{ext}"


def ext_for(content_type: str | None, url: str = "") -> str:
    """A file extension (no dot) for a content type, else from the URL's path, else `bin`."""
    if content_type:
        ext = _EXTENSIONS.get(_norm_type(content_type))
        if ext:
            return ext
    suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower().lstrip(".")
    if suffix in ("png", "jpg", "jpeg", "webp", "gif"):
        return "jpg" if suffix == "jpeg" else suffix
    return "bin"


def output_path(output_dir: Path, rel: str) -> Path:
    """The absolute path of a ledger-relative path; ValueError if it would leave `output_dir`."""
    check_output_path(rel)
    return output_dir / rel


def check_output_path(rel: str) -> None:
    """ValueError unless `rel` is a relative path that stays inside its folder: not empty, not
    absolute, no drive (Windows), no `..` part (either slash separates), no NUL. String checks,
    not `Path` parsing: this runs for every output the ledger records."""
    if (
        not rel
        or os.path.isabs(rel)
        or os.path.splitdrive(rel)[0]
        or "\x00" in rel
        or ".." in rel.replace("\\", "/").split("/")
    ):
        raise ValueError(f"unsafe output path {rel!r}")


# --- temporary files ---------------------------------------------------------------------------


def cleanup_temp_files(output_dir: Path) -> int:
    """Remove temporary files a killed run left in `<output>/images/` (any depth) and in
    `<output>/` itself; return how many were removed."""
    count = 0
    candidates: list[Path] = []
    if output_dir.is_dir():
        candidates += [p for p in output_dir.iterdir() if p.name.startswith(TEMP_PREFIX)]
    images = output_dir / IMAGES_DIR
    for root, _dirs, files in os.walk(images):
        candidates += [Path(root, f) for f in files if f.startswith(TEMP_PREFIX)]
    for path in candidates:
        if path.is_file() and not path.is_symlink():
            with suppress(FileNotFoundError):
                path.unlink()
                count += 1
    return count


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verify_outputs(output_dir: Path, records: Iterable[OutputRecord]) -> list[Problem]:
    """Recompute each file's size and sha256 and compare with its record (synchronous)."""
    problems: list[Problem] = []
    for rec in records:
        try:
            path = output_path(output_dir, rec.path)
        except ValueError as exc:
            problems.append(Problem(rec.path, "unsafe_path", str(exc)))
            continue
        if not path.is_file():
            problems.append(Problem(rec.path, "missing", "no such file"))
            continue
        digest, size = sha256_file(path)
        if size != rec.bytes:
            problems.append(
                Problem(rec.path, "size", f"{size} bytes on disk, {rec.bytes} recorded")
            )
        elif digest != rec.sha256:
            problems.append(Problem(rec.path, "sha256", f"{digest} on disk, {rec.sha256} recorded"))
    return problems


# --- downloads ---------------------------------------------------------------------------------


def _norm_type(content_type: str) -> str:
    kind = content_type.split(";", 1)[0].strip().lower()
    return {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}.get(kind, kind)


def describe_url(url: str) -> str:
    """A URL for messages: no query string or fragment; data URIs without their payload."""
    if url.startswith("data:"):
        return url.split(",", 1)[0][:64] + ",…"
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # the port kept, any user:password dropped
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def decode_data_uri(url: str, max_bytes: int) -> tuple[bytes, str | None]:
    """(bytes, media type) of a `data:` URI; DownloadError (permanent) when malformed or large."""
    header, comma, body = url[5:].partition(",")
    if not comma:
        raise DownloadError("malformed data URI: no comma", transient=False)
    params = header.split(";")
    media = params[0] or None
    if "base64" in (p.strip().lower() for p in params[1:]):
        compact = "".join(body.split())
        if len(compact) * 3 // 4 > max_bytes + 3:
            raise DownloadError(f"data URI larger than {max_bytes} bytes", transient=False)
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DownloadError(f"malformed base64 in data URI: {exc}", transient=False) from None
    else:
        data = urllib.parse.unquote_to_bytes(body)
    if len(data) > max_bytes:
        raise DownloadError(f"data URI larger than {max_bytes} bytes", transient=False)
    return data, media


def _check_image(data: bytes) -> tuple[str, int, int]:
    """(content type, width, height) of image bytes that are whole; DownloadError else.

    PNG carries a CRC on every chunk, and `verify()` checks them all through IEND: that proves
    the bytes are the ones the server's encoder wrote, which is all a download can break, at a
    third of the cost of decoding them too. Formats without checksums are decoded to prove
    they are whole (JPEG at 1/8 scale).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format or "", img.size
            img.verify()
        if fmt != "PNG":
            with Image.open(io.BytesIO(data)) as img:
                if fmt == "JPEG":
                    img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                    img.load()
                elif width * height <= _MAX_DECODE_PIXELS:
                    img.load()
    except Exception as exc:  # anything Pillow raises means "not a valid image"
        raise DownloadError(f"not a valid image: {exc}", transient=False) from None
    content_type = Image.MIME.get(fmt, "application/octet-stream")
    return content_type, width, height


def _check_expected(
    actual: tuple[str, int, int],
    width: int | None,
    height: int | None,
    content_type: str | None,
) -> None:
    got_type, got_w, got_h = actual
    if (width is not None and width != got_w) or (height is not None and height != got_h):
        said = f"{'?' if width is None else width}x{'?' if height is None else height}"
        raise DownloadError(f"image is {got_w}x{got_h}, the result said {said}", transient=False)
    if content_type is not None and _norm_type(content_type) != got_type:
        raise DownloadError(f"image is {got_type}, the result said {content_type}", transient=False)


def _store(
    data: bytes, tmp: Path, dest: Path, expect: tuple[int | None, int | None, str | None]
) -> tuple[str, int, int]:
    """Verify the bytes, write them to `tmp`, fsync, rename to `dest`, fsync the folder."""
    [result] = _store_batch([(data, tmp, dest, expect)])
    if isinstance(result, BaseException):
        raise result
    return result


_Job = tuple[bytes, Path, Path, tuple[int | None, int | None, str | None]]


def _store_batch(jobs: list[_Job]) -> list[tuple[str, int, int] | BaseException]:
    """Publish many files at once (runs in a thread), as a group commit: each is verified and
    written to its temp name; then all are made durable together (`sync_files`), renamed, and
    each folder fsynced once. Returns per file its (content type, width, height), or the
    exception that stopped it."""
    results: list[tuple[str, int, int] | BaseException] = []
    written: list[tuple[int, Path, Path]] = []
    made: set[Path] = set()  # folders known to exist: one mkdir per folder, not per file
    try:
        for data, tmp, dest, expect in jobs:
            try:
                actual = _check_image(data)
                _check_expected(actual, *expect)
                if dest.parent not in made:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    made.add(dest.parent)
                write_unsynced(tmp, data)
            except Exception as exc:
                results.append(exc)
                continue
            written.append((len(results), tmp, dest))
            results.append(actual)
        failed = sync_files([tmp for _, tmp, _ in written])
        folders: set[Path] = set()
        for index, tmp, dest in written:
            try:
                if tmp in failed:
                    raise failed[tmp]
                os.replace(tmp, dest)
            except Exception as exc:
                tmp.unlink(missing_ok=True)
                results[index] = exc
                continue
            folders.add(dest.parent)
        written.clear()
        for folder in folders:
            fsync_dir(folder)
    finally:
        for _, tmp, _ in written:  # left by an exception that is not an Exception
            tmp.unlink(missing_ok=True)
    return results


class Publisher:
    """Publishes downloaded files in batches, from the event loop.

    Files that arrive while a batch is being written wait for the next one, so a busy run
    makes one thread hand-off and one folder fsync per batch instead of per file, and an idle
    one publishes each file at once.
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[_Job, asyncio.Future[tuple[str, int, int]]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0

    def __repr__(self) -> str:
        return f"Publisher(waiting={len(self._waiting)}, batches={self.batches})"

    async def publish(
        self, data: bytes, dest: Path, expect: tuple[int | None, int | None, str | None]
    ) -> tuple[str, int, int]:
        future: asyncio.Future[tuple[str, int, int]] = asyncio.get_running_loop().create_future()
        self._waiting.append(((data, temp_path(dest), dest, expect), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            self.batches += 1
            try:
                results = await asyncio.to_thread(_store_batch, [job for job, _ in batch])
            except BaseException as exc:  # the thread itself failed: tell every waiter
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # its download was cancelled meanwhile
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


async def _fetch(session: aiohttp.ClientSession, url: str, timeout: float, max_bytes: int) -> bytes:
    """The body of `url`, at most `max_bytes` (output images are held in memory briefly)."""

    def failure(reason: str, transient: bool, status: int | None = None) -> DownloadError:
        # The URL is shortened for the message only on failure: a download is otherwise cheap.
        return DownloadError(f"{describe_url(url)}: {reason}", transient=transient, status=status)

    chunks: list[bytes] = []
    size = 0
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status >= 400:
                transient = resp.status >= 500 or resp.status in (408, 425, 429)
                raise failure(f"HTTP {resp.status}", transient, resp.status)
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise failure(f"larger than {max_bytes} bytes", False)
            async for chunk in resp.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise failure(f"larger than {max_bytes} bytes", False)
                chunks.append(chunk)
    except (aiohttp.InvalidURL, ValueError) as exc:
        raise failure(f"invalid URL ({exc})", False) from None
    except TimeoutError:
        raise failure(f"timed out after {timeout}s", True) from None
    except aiohttp.ClientError as exc:
        raise failure(f"{type(exc).__name__}: {exc}", True) from None
    return b"".join(chunks)


async def download_image(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    *,
    expect_width: int | None = None,
    expect_height: int | None = None,
    expect_content_type: str | None = None,
    timeout: float = 120.0,
    max_bytes: int = 100 * 1024 * 1024,
    publisher: Publisher | None = None,
) -> DownloadedFile:
    """Download one image (http(s) or data: URI) to `dest`, verified, atomically.

    Raises DownloadError; on any failure (cancellation too) no temporary file is left and
    `dest` is untouched. A local disk error (OSError, e.g. disk full) is not a download error
    and propagates as it is.
    """
    if url.startswith("data:"):
        data, _media = decode_data_uri(url, max_bytes)
    else:
        data = await _fetch(session, url, timeout, max_bytes)
    sha, size = hashlib.sha256(data).hexdigest(), len(data)
    expect = (expect_width, expect_height, expect_content_type)
    try:
        if publisher is None:
            content_type, width, height = await asyncio.to_thread(
                _store, data, temp_path(dest), dest, expect
            )
        else:
            content_type, width, height = await publisher.publish(data, dest, expect)
    except DownloadError as exc:
        raise DownloadError(f"{describe_url(url)}: {exc.message}", transient=False) from None
    return DownloadedFile(dest, url, size, sha, width, height, content_type)
