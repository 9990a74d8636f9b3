"""`diagnose(output_dir)`: what is wrong with an output folder and its ledger, and what to do.

Checks, in order (a check that cannot be made stops the ones after it):

  1. the ledger is there (`check_ledger_present`: not an earlier run's outputs without it)
  2. this user can write the ledger, its journal files and the folder
  3. SQLite's `PRAGMA integrity_check`, through a read-only connection
  4. the migrations: every one this version knows applied, none it does not know
  5. every completed item's output files against the ledger, by size and sha256
     (`batch.outputs.verify_outputs`)
  6. free space on the disk that holds the folder

and notes that are no problem: items by state, temporary files a killed run left (the next run
removes them), image files the ledger does not record. Nothing is written: the ledger is read
through a read-only connection (opened `immutable` when even that needs a write the folder
refuses).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from batch.ledger.faults import (
    LEDGER_NAME,
    LedgerDamagedError,
    LedgerMissingError,
    check_ledger_present,
    check_writable,
)
from batch.ledger.migrations import MIGRATIONS
from batch.outputs.durable import TEMP_PREFIX
from batch.outputs.faults import NotWritableError
from batch.outputs.naming import IMAGES_DIR, OutputRecord, Problem, verify_outputs

LOW_SPACE = 64 * 1024 * 1024  # bytes free below which the next run may well fill the disk
_SHOWN = 5  # problem files named per kind


@dataclass(frozen=True)
class Finding:
    """One check: `ok`, what it found, and (when not ok) what to do."""

    ok: bool
    what: str
    todo: str = ""


@dataclass
class Diagnosis:
    """What `diagnose` found: checks (`findings`) and notes that are no problem."""

    output_dir: Path
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(f.ok for f in self.findings)

    def add(self, ok: bool, what: str, todo: str = "") -> bool:
        self.findings.append(Finding(ok, what, todo))
        return ok

    def text(self) -> str:
        lines = [f"doctor: {self.output_dir}"]
        for found in self.findings:
            lines.append(f"  {'ok     ' if found.ok else 'PROBLEM'}  {found.what}")
            if found.todo:
                lines.append(f"           what to do: {found.todo}")
        lines += [f"  note     {note}" for note in self.notes]
        problems = sum(not f.ok for f in self.findings)
        lines.append(
            "healthy" if not problems else f"{problems} problem{'s' if problems > 1 else ''}"
        )
        return "\n".join(lines)


def diagnose(output_dir: Path) -> Diagnosis:
    """Check an output folder and its ledger (see the module's docstring); writes nothing."""
    result = Diagnosis(output_dir)
    path = output_dir / LEDGER_NAME
    try:
        check_ledger_present(output_dir, create=False)
    except LedgerMissingError as exc:
        result.add(False, str(exc))
        return result
    result.add(True, f"ledger: {path} ({_size(path.stat().st_size)})")
    try:
        check_writable(path)
    except NotWritableError as exc:
        result.add(False, f"cannot write {exc.path}: {exc.reason}", _WRITABLE_TODO)
    else:
        result.add(True, "writable: the ledger, its journal files and the folder")
    try:
        with _read_only(path) as conn:
            if _integrity(result, conn) and _migrations(result, conn):
                _items(result, conn)
                _outputs(result, conn, output_dir)
    except sqlite3.DatabaseError as exc:
        result.add(False, f"the ledger cannot be read: {exc}", _recover_todo(path))
    _space(result, output_dir)
    return result


_WRITABLE_TODO = (
    "run as the user that owns the folder, or give this one write access (e.g. `chown -R`"
    " or `chmod -R u+w` on the output folder); a read-only file system must be remounted"
    " read-write"
)


def _recover_todo(path: Path) -> str:
    folder = path.parent
    return (
        f"`firered-batch doctor {folder} --recover` copies every row still readable into a new"
        f" ledger and keeps the damaged files in {folder}/damaged-<time>/; or, with the sqlite3"
        f" command (built with its dbpage table): `sqlite3 {path} .recover | sqlite3"
        f" {folder}/recovered.sqlite`, then move {path.name}* aside and recovered.sqlite to"
        f" {path.name}; or start over: the same `firered-batch run` command with --start-over"
        " moves the folder's files aside (and sends every item again)"
    )


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection that makes no file: without a -wal file beside the ledger there
    is nothing but the file to read (`immutable`: no -wal or -shm made); with one, it is read
    too (`mode=ro`), unless that needs a -shm file the folder will not take."""
    uri = path.resolve().as_uri()
    wal = path.with_name(path.name + "-wal")
    try:
        conn = _connect(f"{uri}?mode=ro" if wal.exists() else f"{uri}?immutable=1")
    except sqlite3.OperationalError:
        conn = _connect(f"{uri}?immutable=1")
    try:
        yield conn
    finally:
        conn.close()


def _connect(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the file
    except BaseException:
        conn.close()
        raise
    return conn


def _integrity(result: Diagnosis, conn: sqlite3.Connection) -> bool:
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(20)")]
    except sqlite3.DatabaseError as exc:
        damaged = LedgerDamagedError(result.output_dir / LEDGER_NAME, str(exc))
        return result.add(False, f"integrity: {damaged.detail}", _recover_todo(damaged.path))
    if rows == ["ok"]:
        return result.add(True, "integrity: PRAGMA integrity_check: ok")
    shown = "; ".join(rows[:3]) + (f" (and {len(rows) - 3} more)" if len(rows) > 3 else "")
    return result.add(
        False, f"integrity: damaged: {shown}", _recover_todo(result.output_dir / LEDGER_NAME)
    )


def _migrations(result: Diagnosis, conn: sqlite3.Connection) -> bool:
    try:
        applied = [str(r[0]) for r in conn.execute("SELECT name FROM migrations")]
    except sqlite3.OperationalError:
        return result.add(
            False,
            "migrations: none recorded: not a firered-batch ledger",
            "move it aside; the next run creates a new one (`firered-batch run JOB"
            " --start-over` moves the whole folder aside)",
        )
    known = [name for name, _ in MIGRATIONS]
    unknown = [name for name in applied if name not in known]
    if unknown:
        return result.add(
            False,
            f"migrations: {', '.join(unknown)} not known to this version",
            "the ledger was written by a newer firered-batch: upgrade it",
        )
    pending = [name for name in known if name not in applied]
    if pending:
        result.add(True, f"migrations: {len(applied)} applied; the next run applies {pending}")
        return False  # the tables the later checks read may not be there yet
    result.add(True, f"migrations: all {len(applied)} applied ({known[-1]} the latest)")
    return True


def _items(result: Diagnosis, conn: sqlite3.Connection) -> None:
    counts = dict(conn.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())
    text = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("completed", "failed", "submitted"))
    result.notes.append(f"items: {text}, {counts.get('pending', 0)} pending")


def _records(conn: sqlite3.Connection) -> Iterator[OutputRecord]:
    cursor = conn.execute(
        "SELECT o.idx, o.path, o.url, o.bytes, o.sha256, o.width, o.height, o.content_type"
        " FROM outputs AS o JOIN items AS i ON i.key = o.item_key"
        " WHERE i.state = 'completed' ORDER BY o.item_key, o.idx"
    )
    for row in cursor:
        yield OutputRecord(*row)


def _outputs(result: Diagnosis, conn: sqlite3.Connection, output_dir: Path) -> None:
    recorded: set[str] = set()

    def counted() -> Iterator[OutputRecord]:
        for record in _records(conn):
            recorded.add(record.path)
            yield record

    problems = verify_outputs(output_dir, counted())
    if not problems:
        result.add(True, f"outputs: all {len(recorded)} files match the ledger (size, sha256)")
    else:
        result.add(
            False,
            f"outputs: {len(problems)} of {len(recorded)} files do not match the ledger:"
            f" {_describe(problems)}",
            "restore them (the ledger has each file's size and sha256), or start over with"
            " `firered-batch run JOB --start-over`",
        )
    temps, unknown = _loose_files(output_dir, recorded)
    if temps:
        result.notes.append(
            f"{temps} temporary files of an interrupted run (the next removes them)"
        )
    if unknown:
        result.notes.append(f"{unknown} files in {IMAGES_DIR}/ that the ledger does not record")


def _describe(problems: list[Problem]) -> str:
    by_kind: dict[str, list[str]] = {}
    for problem in problems:
        by_kind.setdefault(problem.kind, []).append(problem.path)
    parts = []
    for kind, paths in sorted(by_kind.items()):
        shown = ", ".join(paths[:_SHOWN]) + (", …" if len(paths) > _SHOWN else "")
        parts.append(f"{kind}: {len(paths)} ({shown})")
    return "; ".join(parts)


def _loose_files(output_dir: Path, recorded: set[str]) -> tuple[int, int]:
    """(temporary files, image files not recorded) under the images folder."""
    kinds: Counter[str] = Counter()
    for root, _dirs, files in os.walk(output_dir / IMAGES_DIR):
        for name in files:
            rel = Path(root, name).relative_to(output_dir).as_posix()
            if name.startswith(TEMP_PREFIX):
                kinds["temp"] += 1
            elif rel not in recorded:
                kinds["unknown"] += 1
    return kinds["temp"], kinds["unknown"]


def _space(result: Diagnosis, output_dir: Path) -> None:
    try:
        free = shutil.disk_usage(output_dir).free
    except OSError:
        return
    if free < LOW_SPACE:
        result.add(
            False,
            f"disk: only {_size(free)} free where {output_dir} is",
            "free some space before the next run (a full disk stops a run, exit 4)",
        )
    else:
        result.notes.append(f"free space: {_size(free)}")


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    units = ("KB", "MB", "GB", "TB")
    for unit in units:
        n /= 1024
        if n < 1024 or unit == units[-1]:
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")
