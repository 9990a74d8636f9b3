"""The requests of fal's upload flows, one attempt each (fal-protocol.md §7).

`StorageClient` (batch.fal.storage) holds the CDN token, picks the flow and walks the fallback
chain; this module only speaks each flow to one host:

- `cdn_single`: ``POST {host}/files/upload`` with the token → the file's ``access_url``;
- `cdn_multipart`: ``POST {host}/files/upload/multipart`` → ``{access_url, uploadId}``, the
  parts ``PUT {access_url}/multipart/{uploadId}/{n}`` (``part_concurrency`` at a time, each
  answering an ``ETag``), then ``POST {access_url}/multipart/{uploadId}/complete``;
- `initiate_and_put`: ``POST {rest_url}/storage/upload/initiate`` with the key →
  ``{upload_url, file_url}``, then one ``PUT upload_url`` without a key (the URL is signed).

Failures are the `FalError` tree the `Transport` makes; a multipart source whose bytes do not
have the expected sha256 raises `ContentChangedError` before ``complete``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import BinaryIO

import aiohttp

from batch.fal.errors import TransientError
from batch.fal.transport import Reply, Transport

CDN_STORAGE_TYPE = "fal-cdn-v3"

Source = bytes | str | os.PathLike[str]


class ContentChangedError(ValueError):
    """The bytes read do not have the sha256 the caller expected (the file changed)."""


async def cdn_single(
    transport: Transport,
    host: str,
    *,
    authorization: str,
    data: bytes,
    content_type: str,
    file_name: str | None,
    timeout: aiohttp.ClientTimeout,
) -> str:
    """One CDN upload in a single POST; returns the file's ``access_url``."""
    reply = await transport.send(
        "upload",
        "POST",
        f"{host}/files/upload",
        timeout=timeout,
        data=data,
        headers=_upload_headers(authorization, content_type, file_name),
    )
    return _access_url("upload", reply)


async def initiate_and_put(
    transport: Transport,
    unsigned: Transport,
    rest_url: str,
    *,
    data: bytes,
    content_type: str,
    file_name: str | None,
    call_timeout: aiohttp.ClientTimeout,
    put_timeout: aiohttp.ClientTimeout,
) -> str:
    """The initiate flow: a signed URL from the REST API, then one PUT to it."""
    reply = await transport.send(
        "upload initiate",
        "POST",
        f"{rest_url}/storage/upload/initiate",
        timeout=call_timeout,
        json_body={"content_type": content_type, "file_name": file_name or "upload.bin"},
        params={"storage_type": CDN_STORAGE_TYPE},
    )
    body = reply.body if isinstance(reply.body, dict) else {}
    upload_url, file_url = body.get("upload_url"), body.get("file_url")
    if not isinstance(upload_url, str) or not upload_url:
        raise TransientError("upload initiate: answer has no upload_url", status=reply.status)
    if not isinstance(file_url, str) or not file_url:
        raise TransientError("upload initiate: answer has no file_url", status=reply.status)
    await unsigned.send(
        "upload put",
        "PUT",
        upload_url,
        timeout=put_timeout,
        data=data,
        headers={"Content-Type": content_type},
    )
    return file_url


async def cdn_multipart(
    transport: Transport,
    host: str,
    source: Source,
    *,
    authorization: str,
    content_type: str,
    file_name: str | None,
    sha256: str | None,
    part_size: int,
    part_concurrency: int,
    call_timeout: aiohttp.ClientTimeout,
    part_timeout: aiohttp.ClientTimeout,
) -> str:
    """A multipart CDN upload, read from ``source`` one part at a time; returns its URL."""
    created = await transport.send(
        "multipart upload",
        "POST",
        f"{host}/files/upload/multipart",
        timeout=call_timeout,
        headers=_upload_headers(authorization, content_type, file_name),
    )
    access_url = _access_url("multipart upload", created)
    upload_id = created.body.get("uploadId") if isinstance(created.body, dict) else None
    if not isinstance(upload_id, str) or not upload_id:
        raise TransientError("multipart upload: answer has no uploadId")
    base = f"{access_url}/multipart/{upload_id}"
    etags = await _parts(
        transport, authorization, base, source, sha256, part_size, part_concurrency, part_timeout
    )
    parts = [{"partNumber": n, "etag": etag} for n, etag in sorted(etags.items())]
    reply = await transport.send(
        "multipart complete",
        "POST",
        f"{base}/complete",
        timeout=call_timeout,
        json_body={"parts": parts},
        headers={"Authorization": authorization},
    )
    body = reply.body if isinstance(reply.body, dict) else {}
    url = body.get("access_url")
    return url if isinstance(url, str) and url else access_url


async def _parts(
    transport: Transport,
    authorization: str,
    base: str,
    source: Source,
    sha256: str | None,
    part_size: int,
    part_concurrency: int,
    timeout: aiohttp.ClientTimeout,
) -> dict[int, str]:
    """Send the parts in order, ``part_concurrency`` at a time, hashing as they are read."""
    etags: dict[int, str] = {}
    digest = hashlib.sha256()
    slots = asyncio.Semaphore(part_concurrency)

    async def put(number: int, chunk: bytes) -> None:
        try:
            reply = await transport.send(
                f"upload part {number}",
                "PUT",
                f"{base}/{number}",
                timeout=timeout,
                data=chunk,
                headers={"Authorization": authorization, "Accept-Encoding": "identity"},
            )
        finally:
            slots.release()
        etag = reply.headers.get("etag")
        if not etag:
            raise TransientError(f"upload part {number}: answer has no ETag")
        etags[number] = etag

    try:
        with _Chunks(source, part_size) as chunks:
            async with asyncio.TaskGroup() as group:
                number = 0
                while chunk := await chunks.next():
                    number += 1
                    digest.update(chunk)
                    await slots.acquire()
                    group.create_task(put(number, chunk))
    except BaseExceptionGroup as group_error:
        raise _first_error(group_error) from None
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ContentChangedError(f"{source_name(source)}: content changed since it was hashed")
    return etags


class _Chunks:
    """Consecutive chunks of bytes or of a file (read in a thread), then b""."""

    def __init__(self, source: Source, size: int) -> None:
        self._source = source
        self._size = size
        self._offset = 0
        self._fh: BinaryIO | None = None

    def __enter__(self) -> _Chunks:
        if not isinstance(self._source, bytes):
            self._fh = open(self._source, "rb")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()

    async def next(self) -> bytes:
        if self._fh is not None:
            return await asyncio.to_thread(self._fh.read, self._size)
        assert isinstance(self._source, bytes)
        chunk = self._source[self._offset : self._offset + self._size]
        self._offset += len(chunk)
        return chunk


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure of a part (the others were cancelled because of it)."""
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first


def source_name(source: Source) -> str:
    """How an error names the source: its path, or "data"."""
    return "data" if isinstance(source, bytes) else os.fspath(source)


def _upload_headers(authorization: str, content_type: str, file_name: str | None) -> dict[str, str]:
    headers = {"Authorization": authorization, "Content-Type": content_type}
    if file_name:
        headers["X-Fal-File-Name"] = file_name
    return headers


def _access_url(call: str, reply: Reply) -> str:
    body = reply.body if isinstance(reply.body, dict) else {}
    url = body.get("access_url")
    if not isinstance(url, str) or not url:
        raise TransientError(f"{call}: answer has no access_url", status=reply.status)
    return url.rstrip("/")
