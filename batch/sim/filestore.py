"""The simulator's file store: files kept in memory under fal-like keys, with expiries.

`FileStore` holds what the storage routes (batch.sim.storage, batch.sim.storage_initiate) and
the queue's output images (batch.sim.imaging) put there; `GET /files/{key}` serves it.
"""

from __future__ import annotations

import heapq
import mimetypes
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(name: str | None, content_type: str) -> str:
    """A URL-safe file name: the client's name cleaned up, or `file` plus the type's extension."""
    if name:
        cleaned = _UNSAFE_NAME_CHARS.sub("_", name.rsplit("/", 1)[-1]).strip("._")
        if cleaned:
            return cleaned[-100:]
    ext = mimetypes.guess_extension(content_type.split(";", 1)[0].strip()) or ".bin"
    return "file" + ext


@dataclass(slots=True)
class _File:
    data: bytes
    content_type: str
    expires_at: float | None = None  # clock seconds; None: never
    pinned: bool = False  # kept (hidden) after expiring, so it can be renewed


class FileStore:
    """Files kept in memory under fal-like keys (`b/0a1b2c3d/<random>_<name>`); thread-safe.

    A file may have an expiry on `clock` (epoch seconds): past it, `get` answers None and the
    file is dropped (lazily), unless it is pinned, which keeps its bytes hidden until `renew`
    or `delete`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._files: dict[str, _File] = {}
        self._reserved: set[str] = set()
        self._expiries: list[tuple[float, str]] = []  # heap: when to look at a file again
        self._total_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._files)

    def __repr__(self) -> str:
        return f"FileStore(files={len(self)}, total_bytes={self.total_bytes})"

    @property
    def total_bytes(self) -> int:
        return self._total_bytes

    def new_key(self, content_type: str, name: str | None = None) -> str:
        """A fresh unique key, reserved so no other upload takes it (multipart fills it later)."""
        safe = _safe_name(name, content_type)
        with self._lock:
            while True:
                key = f"b/{secrets.token_hex(4)}/{secrets.token_hex(8)}_{safe}"
                if key not in self._files and key not in self._reserved:
                    self._reserved.add(key)
                    return key

    def put(
        self,
        data: bytes,
        content_type: str,
        name: str | None = None,
        *,
        expires_at: float | None = None,
        pinned: bool = False,
    ) -> str:
        """Store `data` under a new key and return the key."""
        key = self.new_key(content_type, name)
        self.put_at(key, data, content_type, expires_at=expires_at, pinned=pinned)
        return key

    def put_at(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        expires_at: float | None = None,
        pinned: bool = False,
    ) -> None:
        """Store (or replace) the file at `key`, e.g. one reserved with `new_key`."""
        with self._lock:
            self._purge()
            old = self._files.get(key)
            if old is not None:
                self._total_bytes -= len(old.data)
            self._files[key] = _File(bytes(data), content_type, expires_at, pinned)
            self._reserved.discard(key)
            self._total_bytes += len(data)
            if expires_at is not None:
                heapq.heappush(self._expiries, (expires_at, key))

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The file's bytes and content type, or None if there is no such key (or it expired)."""
        with self._lock:
            found = self._files.get(key)
            if found is None:
                return None
            if found.expires_at is not None and self.clock() >= found.expires_at:
                if not found.pinned:
                    self._drop(key)
                return None
            return found.data, found.content_type

    def expires_at(self, key: str) -> float | None:
        """When the file expires (None: never); KeyError if there is no such file."""
        return self._files[key].expires_at

    def renew(self, key: str, expires_at: float | None) -> bool:
        """Give a file (expired but pinned, or still live) a new expiry; False if it is gone."""
        with self._lock:
            found = self._files.get(key)
            if found is None:
                return False
            found.expires_at = expires_at
            if expires_at is not None:
                heapq.heappush(self._expiries, (expires_at, key))
            return True

    def delete(self, key: str) -> bool:
        """Forget the file at `key`; True if it existed."""
        with self._lock:
            self._reserved.discard(key)
            return self._drop(key)

    def _drop(self, key: str) -> bool:
        old = self._files.pop(key, None)
        if old is None:
            return False
        self._total_bytes -= len(old.data)
        return True

    def _purge(self) -> None:
        """Drop unpinned files whose expiry has passed (called with the lock held)."""
        now = self.clock()
        while self._expiries and self._expiries[0][0] <= now:
            when, key = heapq.heappop(self._expiries)
            found = self._files.get(key)
            if found is not None and not found.pinned and found.expires_at == when:
                self._drop(key)
