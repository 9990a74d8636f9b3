"""Glob patterns over the file system that always end: each real folder is read once.

`glob.glob(recursive=True)` follows symbolic links to folders at every level, so a link that
points back up (``photos/loop -> ..``) makes ``photos/**/*.png`` walk ever longer paths, and two
such links an exponential number of them, until memory runs out. `glob_files` matches the same
way (`fnmatch` per path component, ``**`` for any number of folders, hidden names only for a
component that starts with ``.``) but remembers every folder it reads by its device and inode,
so a folder reached again — through a loop, or through a second link to it — is not read again
for the same part of the pattern.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable
from functools import lru_cache

_MAGIC = re.compile(r"[*?[]")


@lru_cache(maxsize=256)
def _matcher(part: str) -> Callable[[str], re.Match[str] | None]:
    return re.compile(fnmatch.translate(part)).match


def _entries(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:  # unreadable, gone, not a folder: glob skips these too
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows links, as glob does
    except OSError:
        return False


def glob_files(pattern: str, base_dir: str) -> list[str]:
    """The paths matching ``pattern`` (relative to ``base_dir`` unless absolute), unsorted,
    each at most once; like ``glob.glob(pattern, root_dir=base_dir, recursive=True)`` joined
    to ``base_dir``, without its endless walks."""
    parts = [p for p in pattern.split(os.sep) if p]
    walk = _Walk(parts)
    walk.push(os.sep if os.path.isabs(pattern) else base_dir, 0)
    while walk.stack:
        folder, index = walk.stack.pop()
        part = parts[index]
        if part == "**":
            walk.any_depth(folder, index)
        elif not _MAGIC.search(part):
            walk.literal(folder, index)
        else:
            walk.matching(folder, index)
    return list(walk.found)


class _Walk:
    """The folders still to read (with the pattern part each is matched against), the folders
    read, and the paths found."""

    def __init__(self, parts: list[str]) -> None:
        self.parts = parts
        self.last = len(parts) - 1
        self.stack: list[tuple[str, int]] = []
        self.found: dict[str, None] = {}  # ordered set
        self._visited: set[tuple[int, int, int]] = set()  # (st_dev, st_ino, part index)

    def push(self, folder: str, index: int) -> None:
        """Read ``folder`` for part ``index`` later, unless this real folder already was."""
        try:
            st = os.stat(folder)
        except OSError:
            return
        state = (st.st_dev, st.st_ino, index)
        if state not in self._visited:
            self._visited.add(state)
            self.stack.append((folder, index))

    def any_depth(self, folder: str, index: int) -> None:
        """``**``: this folder (no folder at all), and every folder below, at any depth."""
        if index < self.last:
            self.push(folder, index + 1)
        for entry in _entries(folder):
            if entry.name.startswith("."):
                continue
            path = os.path.join(folder, entry.name)
            if index == self.last:
                self.found[path] = None
            if _is_dir(entry):
                self.push(path, index)

    def literal(self, folder: str, index: int) -> None:
        path = os.path.join(folder, self.parts[index])
        if index == self.last:
            if os.path.lexists(path):
                self.found[path] = None
        elif os.path.isdir(path):
            self.push(path, index + 1)

    def matching(self, folder: str, index: int) -> None:
        part = self.parts[index]
        match, dotted = _matcher(part), part.startswith(".")
        for entry in _entries(folder):
            if (entry.name.startswith(".") and not dotted) or not match(entry.name):
                continue
            path = os.path.join(folder, entry.name)
            if index == self.last:
                self.found[path] = None
            elif _is_dir(entry):
                self.push(path, index + 1)
