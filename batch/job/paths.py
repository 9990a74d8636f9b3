"""Where a run may write: the output folder is refused when writing there would destroy or
pollute something else.

A run writes ``images/``, ``ledger.sqlite``, ``results.csv``, ``results.jsonl`` and
``report.html`` into its output folder. So the folder may not be, or contain (be an ancestor
of), the folder of the job's inputs — the manifest's, the job file's, a local image's named in
the job's ``defaults`` — where ``results.jsonl`` could be the manifest itself; nor ``/``, the
user's home folder itself (or a folder that contains it), nor a folder the operating system
owns. Below the home folder, in ``/tmp``, ``/var/tmp``, ``/srv``, ``/opt``, ``/usr/src`` (a
container's usual work folder) and the like, anything goes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from batch.manifest import display_path

# Trees the system owns: the folder and everything below it is refused.
SYSTEM_TREES = tuple(
    Path(p)
    for p in (
        "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
        "/run", "/sbin", "/sys",
        "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec",
        "/usr/include", "/usr/share",
        "/usr/local/bin", "/usr/local/sbin", "/usr/local/lib", "/usr/local/include",
        "/usr/local/share", "/usr/local/etc",
        "/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/mail", "/var/backups",
        "/var/run", "/var/lock",
    )
)  # fmt: skip
# Folders that are refused themselves, though what people keep below them is theirs
# (/usr/src/app, /var/www, /var/tmp, a root user's /root/work).
SYSTEM_FOLDERS = tuple(Path(p) for p in ("/usr", "/usr/local", "/var", "/root", "/home"))

_WRITES = "the run writes results.csv, results.jsonl, report.html and images/ there"


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except (RuntimeError, KeyError, OSError):
        return None


def output_problem(output: Path, inputs: Iterable[tuple[str, Path]]) -> str | None:
    """Why ``output`` (absolute, resolved) may not be written to, or None.

    ``inputs`` are (what it is, folder) pairs: the folders of the job's inputs, which the
    output folder may neither be nor contain.
    """
    shown = display_path(output)
    if output == Path(output.anchor):
        return f"{shown} is the root folder"
    if output.exists() and not output.is_dir():
        return f"{shown} is a file, not a folder"
    for what, folder in inputs:
        if folder == output:
            return f"{shown} is {what} ({_WRITES})"
        if folder.is_relative_to(output):
            return f"{shown} contains {what}, {display_path(folder)} ({_WRITES})"
    home = _home()
    if home is not None and home != Path(home.anchor):
        if home == output:
            return f"{shown} is your home folder (use a folder inside it)"
        if home.is_relative_to(output):
            return f"{shown} contains your home folder, {home}"
        if output.is_relative_to(home):
            return None
    return _system_problem(output, shown)


def _system_problem(output: Path, shown: str) -> str | None:
    for tree in SYSTEM_TREES:
        if output.is_relative_to(tree):
            return f"{shown} is inside {tree}, a system folder"
    if output in SYSTEM_FOLDERS:
        return f"{shown} is a system folder"
    return None


def absolute(path: Any, base_dir: Path) -> Path | None:
    """``path`` (a string or path) made absolute against ``base_dir`` and resolved, or None
    when it is not a path or cannot be resolved (a NUL in it, a loop of symbolic links):
    then validation reports it."""
    if not isinstance(path, str | os.PathLike) or not str(path):
        return None
    try:
        return (base_dir / Path(path).expanduser()).resolve()
    except (ValueError, OSError, RuntimeError):
        return None


def drop_value(data: Any, loc: tuple[str | int, ...]) -> None:
    """Remove the value at ``loc`` from nested dicts and lists (its problem is reported)."""
    try:
        for part in loc[:-1]:
            data = data[part]
        if isinstance(data, dict):
            data.pop(loc[-1], None)
        elif isinstance(data, list) and isinstance(loc[-1], int):
            data[loc[-1]] = None
    except (KeyError, IndexError, TypeError):
        pass  # keys that were not strings: left for validation to refuse
