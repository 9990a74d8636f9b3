"""An async object store opened from a URL: S3, GCS, Azure, a local folder, or memory.

A thin wrapper over obstore (the `[cloud]` extra), which is imported only when a store is
opened, so the default install works without it. Keys are `/`-separated and relative to the
URL's path (`s3://bucket/jobs/a` + `lease.json` → `jobs/a/lease.json`). Every failure is a
`StoreError` (see `errors.py`), made in `errors.translate`.

Conditional writes are what the lease and the journal stand on: `create` is create-only
(obstore's `mode="create"`: S3 If-None-Match, GCS ifGenerationMatch=0, a hard link locally),
`swap` is compare-and-swap on an ETag (`mode={"e_tag": …}`; for a local folder obstore 0.12
has none, so `local_cas` does it under a folder lock).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import unquote, urlsplit

from batch.remote.errors import (
    INSTALL_HINT,
    StoreConfigError,
    StoreError,
    is_missing,
    reason,
    translate,
)
from batch.remote.local_cas import LocalCas

if TYPE_CHECKING:
    from obstore.store import ObjectStore, RetryConfig

_CLOUD_SCHEMES = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl")


class Head(NamedTuple):
    """What `Store.head` returns: the object's ETag and size in bytes."""

    etag: str
    size: int


def open_store(url: str, *, max_retries: int | None = None) -> Store:
    """Open the store at `url`: s3://, gs://, az://, file:///abs/path, a plain path, memory://.

    Credentials and endpoints come from the environment as obstore reads them
    (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `AWS_REGION`, `GOOGLE_SERVICE_ACCOUNT`, …).
    A local folder is created if missing. `max_retries` caps obstore's retries of failed
    requests (its default retries for up to three minutes).
    """
    try:
        import obstore.store as obs_store
    except ImportError:
        raise StoreConfigError(INSTALL_HINT) from None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        if scheme == "memory":
            base = parts.path.strip("/")
            return Store(obs_store.MemoryStore(), "memory:///" + base, base=base)
        if scheme in ("", "file"):
            root = Path(unquote(parts.path) if scheme == "file" else url).expanduser().resolve()
            inner = obs_store.LocalStore(root, mkdir=True)
            return Store(inner, root.as_uri(), cas=LocalCas(inner, root))
        if scheme not in _CLOUD_SCHEMES:
            raise StoreConfigError(
                f"unsupported store URL scheme {scheme + '://'!r}: "
                "use s3://, gs://, az://, file:// or a local folder"
            )
        retry: RetryConfig | None = None if max_retries is None else {"max_retries": max_retries}
        cloud = obs_store.from_url(url, retry_config=retry)
    except Exception as exc:
        raise translate(exc, "open", _display(url)) from None
    return Store(cloud, _display(url))


def _etag(etag: str | None, url: str) -> str:
    # S3, GCS, Azure, local and memory stores all give one; a store that does not cannot CAS
    if not etag:
        raise StoreConfigError(f"{url}: the store gives no ETags, so no conditional writes")
    return etag


def _display(url: str) -> str:
    """`url` without user info, query or fragment (which may hold secrets), no trailing '/'."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path}".rstrip("/")


class Store:
    """Async object storage under one prefix; see `open_store`."""

    def __init__(
        self, inner: ObjectStore, display: str, *, base: str = "", cas: LocalCas | None = None
    ) -> None:
        self._inner = inner
        self._display = display.rstrip("/")
        # a key prefix applied here, for the memory store (obstore applies the others')
        self._base = base.strip("/") + "/" if base.strip("/") else ""
        # set for a local folder: its swaps and conditional deletes go through local_cas
        self._cas = cas

    def __repr__(self) -> str:
        return f"Store({self._display!r})"

    def url(self, key: str = "") -> str:
        """The object's URL for messages and logs (no credentials)."""
        return f"{self._display}/{key}" if key else self._display

    def _path(self, key: str) -> str:
        if not key or any(p in ("", ".", "..") for p in key.split("/")):
            raise StoreConfigError(f"invalid object key {key!r}: '/'-separated names, no '..'")
        return self._base + key

    async def put(self, key: str, data: bytes) -> None:
        """Write `data` at `key`, replacing what is there (atomic: all or nothing)."""
        try:
            await self._inner.put_async(self._path(key), data)
        except Exception as exc:
            raise translate(exc, "put", self.url(key)) from None

    async def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Upload a local file, streamed (multipart above 5 MB), never wholly in memory."""
        if not Path(path).is_file():  # else obstore's FileNotFoundError reads "no such object"
            raise StoreError(f"put {self.url(key)}: no such file {os.fspath(path)!r}")
        try:
            await self._inner.put_async(self._path(key), Path(path))
        except Exception as exc:
            raise translate(exc, "put", self.url(key)) from None

    async def get(self, key: str) -> bytes:
        """The object's bytes; `MissingObjectError` if absent."""
        try:
            result = await self._inner.get_async(self._path(key))
            return bytes(await result.bytes_async())
        except Exception as exc:
            raise translate(exc, "get", self.url(key)) from None

    async def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Download to `path` atomically: streamed to a temporary file beside it, then renamed."""
        from obstore.exceptions import BaseError

        dest = Path(path)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
        try:
            result = await self._inner.get_async(self._path(key))
        except Exception as exc:
            raise translate(exc, "get", self.url(key)) from None
        try:
            with tmp.open("wb") as f:
                async for chunk in result.stream():
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseError as exc:  # the download broke off
            raise translate(exc, "get", self.url(key)) from None
        except OSError as exc:  # ours: the destination cannot be written
            raise StoreError(f"get {self.url(key)}: cannot write {dest}: {reason(exc)}") from None
        finally:
            tmp.unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""
        return await self.head(key) is not None

    async def head(self, key: str) -> Head | None:
        """The object's ETag and size, or None if absent."""
        try:
            meta = await self._inner.head_async(self._path(key))
        except Exception as exc:
            if is_missing(exc):
                return None
            raise translate(exc, "head", self.url(key)) from None
        return Head(meta["e_tag"] or "", meta["size"])

    async def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix` (a plain string prefix), sorted."""
        # obstore matches whole path segments ("a/x" does not find "a/x.json"): list the
        # prefix's folder and filter here, so `prefix` means what it says on every store
        folder = prefix.rpartition("/")[0]
        listed = (self._base + folder).rstrip("/")
        try:
            metas = await self._inner.list(listed or None).collect_async()
        except Exception as exc:
            if is_missing(exc):  # a local store's folder that does not exist yet
                return []
            raise translate(exc, "list", self.url(prefix)) from None
        keys = (m["path"].removeprefix(self._base) for m in metas)
        return sorted(k for k in keys if k.startswith(prefix))

    async def check(self) -> None:
        """One small list, so a missing bucket, bad credentials or a dead endpoint fail at start.

        (`head` and `exists` cannot tell a missing bucket: S3's 404 to HEAD has no body.)
        """
        try:
            async for _ in self._inner.list(self._base.rstrip("/") or None, chunk_size=1):
                break
        except Exception as exc:
            if not is_missing(exc):  # a local folder not created yet is fine
                raise translate(exc, "list", self.url()) from None

    async def delete(self, key: str) -> None:
        """Delete the object; deleting an absent one is not an error."""
        try:
            await self._inner.delete_async(self._path(key))
        except Exception as exc:
            if not is_missing(exc):  # a local store raises for an absent file; S3 does not
                raise translate(exc, "delete", self.url(key)) from None

    async def create(self, key: str, data: bytes) -> str | None:
        """Write `data` only if nothing is at `key`: the new ETag, or None if something was."""
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            result = await self._inner.put_async(self._path(key), data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return None
        except Exception as exc:
            raise translate(exc, "create", self.url(key)) from None
        return _etag(result["e_tag"], self.url(key))

    async def swap(self, key: str, data: bytes, etag: str) -> str | None:
        """Replace the object only if its ETag is still `etag`: the new ETag, or None if not
        (changed or deleted since)."""
        from obstore.exceptions import PreconditionError

        path = self._path(key)
        try:
            if self._cas is not None:
                return await asyncio.to_thread(self._cas.swap, path, data, etag)
            result = await self._inner.put_async(path, data, mode={"e_tag": etag})
        except PreconditionError:  # S3 answers 412 for a changed ETag, 404 for a deleted one
            return None
        except Exception as exc:
            raise translate(exc, "swap", self.url(key)) from None
        return _etag(result["e_tag"], self.url(key))

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create-only write: whether it was written (False: the key already existed)."""
        return await self.create(key, data) is not None

    async def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        """Compare-and-swap write: whether it was written (False: the ETag no longer matched)."""
        return await self.swap(key, data, etag) is not None

    async def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and the ETag of exactly those bytes, or None if absent."""
        try:
            result = await self._inner.get_async(self._path(key))
            data = bytes(await result.bytes_async())
        except Exception as exc:
            if is_missing(exc):
                return None
            raise translate(exc, "get", self.url(key)) from None
        return data, _etag(result.meta["e_tag"], self.url(key))

    async def delete_if_match(self, key: str, etag: str) -> bool:
        """Delete the object if its ETag is still `etag`; whether it was deleted.

        Atomic on a local folder only: obstore 0.12 has no conditional delete, so elsewhere
        this is head, compare, delete (`Lease.release` keeps swaps out of that window).
        """
        path = self._path(key)
        if self._cas is not None:
            try:
                return await asyncio.to_thread(self._cas.delete_if, path, etag)
            except Exception as exc:
                raise translate(exc, "delete", self.url(key)) from None
        head = await self.head(key)
        if head is None or head.etag != etag:
            return False
        await self.delete(key)
        return True

    async def sign(self, key: str, expires_s: float) -> str:
        """A presigned GET URL for the object, valid `expires_s` seconds (S3, GCS, Azure only).

        The URL itself is a credential for that object: do not log it.
        """
        from obstore import sign_async
        from obstore.store import AzureStore, GCSStore, S3Store

        if not isinstance(self._inner, S3Store | GCSStore | AzureStore):
            raise StoreConfigError(
                f"sign {self.url(key)}: presigned URLs need an s3://, gs:// or az:// store"
            )
        try:
            return await sign_async(
                self._inner, "GET", self._path(key), timedelta(seconds=expires_s)
            )
        except Exception as exc:
            raise translate(exc, "sign", self.url(key)) from None
