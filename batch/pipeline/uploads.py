"""Local input images on their way to fal: ``local:sha256:…`` references → URLs, per submit.

An item's payload in the ledger keeps the content references (so its key and canonical request
never depend on where a file is or when it was uploaded); `Uploader.prepare` makes the payload
that is sent. For each local reference:

1. ``inputs: data-uri`` and a file of at most `DATA_URI_MAX_BYTES`: the file inline;
2. the ledger's upload cache has the content, uploaded to the same storage API (``rest_url``;
   for ``queue: local``, this run's simulator) less than ``upload_max_age`` ago: its URL;
3. an upload of the same content already running for another item: wait for that one;
4. else: upload it (at most ``upload_concurrency`` at a time), retrying transient failures and
   429s with the run's `RetryPolicy` (Retry-After honoured), and record it in the cache.

The file's bytes are found through the ledger's ``local_files`` record of that sha256 and are
checked against it as they are read: a file changed or removed since planning fails the item
(`InputFileError`, kind ``input``) rather than send other pixels under its key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from batch.errors import BatchError
from batch.fal import (
    DEFAULT_REST_URL,
    ContentChangedError,
    QueueClient,
    StorageClient,
    encode_data_uri,
)
from batch.job import JobSpec
from batch.ledger import Ledger
from batch.ledger.uploads import UploadCache
from batch.manifest.localfiles import LocalFile, local_sha
from batch.pipeline.policy import RetryPolicy, retrying
from batch.remote import Store, StoreError, open_store

log = logging.getLogger("batch.uploads")

DATA_URI_MAX_BYTES = 4 * 1024 * 1024
InputsMode = Literal["upload", "data-uri"]


class InputFileError(BatchError):
    """A local input that cannot be sent: unknown, removed, unreadable or changed."""


PRESIGN_S = 24 * 3600.0


@dataclass
class UploadStats:
    uploaded: int = 0  # files uploaded
    bytes: int = 0  # their bytes
    cached: int = 0  # references served from the ledger's cache
    shared: int = 0  # references that waited for another item's upload
    inlined: int = 0  # references sent as data URIs
    retried: int = 0  # upload attempts that failed and were tried again
    presigned: int = 0  # object store URIs sent as presigned URLs

    def text(self) -> str:
        """``4 files uploaded (1.2 MiB), 8 from the cache, 2 shared, 0 inline, 1 retried``."""
        return (
            f"{self.uploaded} files uploaded ({self.bytes / 2**20:.1f} MiB), {self.cached} from"
            f" the cache, {self.shared} shared, {self.inlined} inline, {self.retried} retried"
        ) + (f", {self.presigned} presigned" if self.presigned else "")


class Uploader:
    """Turns the local references of a payload into URLs (or data URIs); one per run."""

    def __init__(
        self,
        storage: StorageClient,
        cache: UploadCache,
        policy: RetryPolicy,
        *,
        inputs: InputsMode = "upload",
        concurrency: int = 4,
        max_age: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.stats = UploadStats()
        self._cache = cache
        self._policy = policy
        self._inputs = inputs
        self._slots = asyncio.Semaphore(concurrency)
        self._max_age = max_age
        self._clock = clock
        self._in_flight: dict[str, asyncio.Task[str]] = {}
        self._stores: dict[str, Store] = {}  # by bucket, for presigning

    async def prepare(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The payload to send: every local reference in ``image_urls`` replaced by a URL, and
        every object store URI (s3://, gs://, az://) by a presigned https URL."""
        urls = payload.get("image_urls")
        if not isinstance(urls, list) or not any(_sha(u) or _in_store(u) for u in urls):
            return dict(payload)
        sent = await asyncio.gather(*(self._resolve(u) for u in urls))
        return {**payload, "image_urls": list(sent)}

    async def _resolve(self, ref: Any) -> Any:
        if _in_store(ref):
            return await self._presign(ref)
        sha = _sha(ref)
        return ref if sha is None else await self.url_for(sha)

    async def _presign(self, uri: str) -> str:
        """A presigned GET URL for an object (`PRESIGN_S` long: fal fetches it when the
        request starts, which may be after a wait in its queue)."""
        bucket, _, key = uri.partition("://")[2].partition("/")
        root = f"{uri.partition('://')[0].lower()}://{bucket}"
        try:
            store = self._stores.get(root) or self._stores.setdefault(root, open_store(root))
            url = await store.sign(key, PRESIGN_S)
        except StoreError as exc:
            raise InputFileError(f"{uri}: {exc}") from None
        self.stats.presigned += 1
        return url

    async def url_for(self, sha256: str) -> str:
        """A URL (or data URI) for the content with this sha256."""
        file = self._cache.file_for(sha256)
        if file is None:
            raise InputFileError(f"no local file with sha256 {sha256[:16]}… is known")
        if self._inputs == "data-uri" and file.size <= DATA_URI_MAX_BYTES:
            self.stats.inlined += 1
            data = await asyncio.to_thread(_read_checked, file)
            return encode_data_uri(data, file.content_type)
        cached = self._cache.get(sha256, self.storage.rest_url)
        if cached is not None and self._clock() - cached.uploaded_at < self._max_age:
            self.stats.cached += 1
            return cached.url
        task = self._in_flight.get(sha256)
        if task is None:
            task = asyncio.create_task(self._upload(file), name=f"upload {sha256[:12]}")
            self._in_flight[sha256] = task
            task.add_done_callback(lambda _: self._in_flight.pop(sha256, None))
        else:
            self.stats.shared += 1
        # Shielded: an item that is cancelled does not cancel the upload others wait for.
        return await asyncio.shield(task)

    async def _upload(self, file: LocalFile) -> str:
        async def once() -> str:
            async with self._slots:
                return await self.storage.upload(
                    file.path, file.content_type, file_name=file.file_name, sha256=file.sha256
                )

        def count(exc: BaseException) -> None:
            self.stats.retried += 1

        try:
            url = await retrying(once, self._policy, attempts=self._policy.attempts, on_retry=count)
        except (ContentChangedError, OSError) as exc:
            raise InputFileError(_input_problem(file, exc)) from None
        self._cache.put(file.sha256, self.storage.rest_url, url, file.size)
        self.stats.uploaded += 1
        self.stats.bytes += file.size
        return url

    async def aclose(self) -> None:
        """Cancel uploads nobody waits for any more (the run is over)."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.stats.uploaded or self.stats.cached or self.stats.inlined or self.stats.presigned:
            log.info("local inputs: %s", self.stats.text())


def _in_store(ref: Any) -> bool:
    return isinstance(ref, str) and ref[:5].lower().startswith(("s3://", "gs://", "az://"))


def _sha(ref: Any) -> str | None:
    return local_sha(ref) if isinstance(ref, str) else None


def _read_checked(file: LocalFile) -> bytes:
    try:
        with open(file.path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputFileError(_input_problem(file, exc)) from None
    if hashlib.sha256(data).hexdigest() != file.sha256:
        raise InputFileError(_input_problem(file, ContentChangedError()))
    return data


def _input_problem(file: LocalFile, exc: BaseException) -> str:
    if isinstance(exc, ContentChangedError):
        why = "changed since the run was planned; run again to plan it anew"
    elif isinstance(exc, FileNotFoundError):
        why = "no longer exists"
    else:
        why = f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    return f"local image {file.path} {why}"


async def storage_url(spec: JobSpec, client: QueueClient) -> str:
    """Where local images go: the job's ``rest_url``; else the simulator's own URL for
    ``queue: local`` or for a queue URL that is a firered-batch simulator (it answers
    ``/_sim/health``: one URL is all a run against it needs); else fal's storage API."""
    if spec.rest_url is not None:
        return spec.rest_url
    if spec.local:
        return client.base_url
    if not spec.on_fal and await _is_simulator(client):
        return client.base_url
    return DEFAULT_REST_URL


async def _is_simulator(client: QueueClient) -> bool:
    try:
        async with client.session.get(
            f"{client.base_url}/_sim/health", timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def make_uploader(
    spec: JobSpec, client: QueueClient, ledger: Ledger, policy: RetryPolicy
) -> Uploader:
    """The run's uploader, at `storage_url`, on the queue client's session."""
    rest_url = await storage_url(spec, client)
    storage = StorageClient(client.session, client.credentials, rest_url=rest_url)
    return Uploader(
        storage,
        ledger.uploads,
        policy,
        inputs=spec.inputs,
        concurrency=spec.upload_concurrency,
        max_age=spec.upload_max_age,
    )
