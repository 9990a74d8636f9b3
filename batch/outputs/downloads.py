"""Downloads of output images: fetched, verified, written atomically, published in batches.

A file reaches its final name only whole: it is downloaded and hashed, checked with Pillow (a
PNG by its chunk checksums, other formats decoded) and against what the result said (width,
height, content type), then written through `batch.outputs.durable` (temporary name, made durable,
renamed; DESIGN invariant 1). Files downloaded at the same time are published as a batch, in
a thread: one durability flush and one folder fsync for all of them (`Publisher`). Any failure
removes the temporary file.

Errors are one type, `DownloadError`, with `transient` saying whether trying again may help
(connection errors, timeouts, truncated bodies, 408/429/5xx) or not (other 4xx, corrupt or
mismatching content, too large); the caller decides how often to try. URLs in messages lose their
query string, and data URIs their payload. A local disk that is full, or refuses the write, is
not a download error: it is `batch.outputs.faults.DiskFullError` (ENOSPC, EDQUOT) or
`NotWritableError` (EACCES, EROFS), with no temporary file left behind.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from PIL import Image

from batch.errors import BatchError
from batch.outputs.durable import fsync_dir, sync_files, temp_path, write_unsynced
from batch.outputs.faults import host_error
from batch.outputs.naming import OutputRecord, norm_content_type

_CHUNK = 64 * 1024
# Above this many pixels a non-JPEG image is checked by its own checksums only, not decoded.
_MAX_DECODE_PIXELS = 64_000_000


class DownloadError(BatchError):
    """A download failed. `transient`: trying again later may succeed."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.status = status

    def __repr__(self) -> str:
        return f"DownloadError({self.message!r}, transient={self.transient}, status={self.status})"


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


def describe_url(url: str) -> str:
    """A URL for messages: no query string or fragment; data URIs without their payload."""
    if url.startswith("data:"):
        return url.split(",", 1)[0][:64] + ",…"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: nothing of it can be shown safely
        return "<unreadable URL>"
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
    if content_type is not None and norm_content_type(content_type) != got_type:
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
                results.append(_local(exc, dest.parent))
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
                _remove(tmp)
                results[index] = _local(exc, dest.parent)
                continue
            folders.add(dest.parent)
        written.clear()
        for folder in folders:
            fsync_dir(folder)
    finally:
        for _, tmp, _ in written:  # left by an exception that is not an Exception
            _remove(tmp)
    return results


def _local(exc: Exception, folder: Path) -> Exception:
    """A local disk's failure as the error it means (`DiskFullError`, `NotWritableError`)."""
    if isinstance(exc, OSError):
        return host_error(exc, folder) or exc
    return exc


def _remove(tmp: Path) -> None:
    # A folder that refuses it: `cleanup_temp_files` removes it at the next run.
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


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

    async def aclose(self) -> None:
        """Wait until every file handed over so far is published (or has failed)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.gather(self._worker, return_exceptions=True)

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
    # aiohttp's texts for the first two name the whole URL, signature and all: not shown.
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, ValueError):
        raise failure("invalid URL", False) from None
    except aiohttp.ClientResponseError as exc:  # too many redirects, a bad redirect
        raise failure(f"{type(exc).__name__} (HTTP {exc.status})", True) from None
    except TimeoutError:
        raise failure(f"timed out after {timeout}s", True) from None
    except aiohttp.ClientError as exc:
        raise failure(f"{type(exc).__name__}: {_without_query(str(exc), url)}", True) from None
    return b"".join(chunks)


def _without_query(text: str, url: str) -> str:
    """`text` with `url`'s query and fragment (where a signed URL keeps its secret) cut out."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return ""  # a URL that cannot be read: none of the text is shown
    for secret in (parts.query, parts.fragment):
        if secret:
            text = text.replace(secret, "…")
    return text


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
    `dest` is untouched. A local disk error is not a download error: a full disk raises
    `DiskFullError` (exit 4, resumable), a refused write `NotWritableError`; any other OSError
    propagates as it is.
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
