"""People's verdicts on output images: the append-only table `reviews` (m008_reviews).

Each output image (item key, output index) is reviewed on its own: ``approved`` or
``rejected``, with an optional note, by a named reviewer. Every write (decide, note, undo) adds
a row — an event, never changed — that holds the review it leaves in force, with the output's
next `version`; the latest version is the review in force. So the history is kept, and `undo`
walks it back (an undo is an event too, and undoes the output's latest decision or note that
is not undone yet: a stack).

Several reviewers, in one process or many, on one ledger: every output's review has a
`version` (0: never reviewed), raised by one at each write. A write may name the version its
writer last saw (`expect_version`); when another write came first it is refused with
`ReviewConflictError`, which carries the review in force, and nothing is written: no decision
is ever overwritten unseen. Each write is one short ``BEGIN IMMEDIATE`` transaction, so SQLite
serialises writers across connections (waiting up to the connection's busy timeout), and
``UNIQUE (item_key, idx, version)`` backs the check.

A decision is about the output's bytes (its sha256 when decided): an item redone since has a
new output, and that one is unreviewed (the old decision stays in the history).

For `status`, exports and redoing: `review_counts` (outputs of completed items), and
`accepted_items` (every output approved), `accepted_outputs`, `rejected_items` (any rejected).
"""

from __future__ import annotations

import sqlite3
import threading
import unicodedata
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batch.ledger.models import LedgerError
from batch.ledger.tx import transaction

Verdict = Literal["approved", "rejected"]
DECISIONS: tuple[Verdict, ...] = ("approved", "rejected")
NOTE_CHARS = 2000
REVIEWER_CHARS = 64

_STATE = "decision, note, reviewer, decided_at, sha256"
_LATEST = (
    "r.version = (SELECT max(m.version) FROM reviews AS m"
    " WHERE m.item_key = r.item_key AND m.idx = r.idx)"
)
_CURRENT = f"""
    SELECT o.item_key, o.idx, o.sha256, r.version, r.id,
           r.decision, r.note, r.reviewer, r.decided_at, r.sha256
    FROM reviews AS r JOIN outputs AS o ON o.item_key = r.item_key AND o.idx = r.idx
    WHERE {_LATEST}
"""
_OUTPUTS = f"""
    FROM outputs AS o JOIN items AS i ON i.key = o.item_key AND i.state = 'completed'
    LEFT JOIN reviews AS r ON r.item_key = o.item_key AND r.idx = o.idx AND {_LATEST}
"""
_IN_FORCE = "(r.sha256 IS o.sha256)"


@dataclass(frozen=True, slots=True)
class Decision:
    """The review in force of one output image. `decision` None: unreviewed (never, undone, or
    about an earlier output of a redone item); `version` 0: never reviewed."""

    key: str
    index: int
    decision: Verdict | None = None
    note: str = ""
    reviewer: str | None = None
    decided_at: float | None = None
    version: int = 0
    event: int = 0  # the id of the `reviews` row (the event) that made it (0: none)

    def as_dict(self) -> dict[str, Any]:
        """Compact JSON, as the review page reads it."""
        return {
            "k": self.key,
            "i": self.index,
            "d": self.decision,
            "n": self.note,
            "by": self.reviewer,
            "at": self.decided_at,
            "v": self.version,
        }


@dataclass(frozen=True, slots=True)
class ReviewCounts:
    """Output images of completed items by review."""

    approved: int = 0
    rejected: int = 0
    unreviewed: int = 0

    @property
    def total(self) -> int:
        return self.approved + self.rejected + self.unreviewed

    def as_dict(self) -> dict[str, int]:
        return {"approved": self.approved, "rejected": self.rejected, "unreviewed": self.unreviewed}


@dataclass(frozen=True, slots=True)
class ReviewEvent:
    """One row of the history: who did what when, and the review it left in force."""

    id: int
    action: Literal["decide", "note", "undo"]
    actor: str
    at: float
    undoes: int | None
    state: Decision


class ReviewConflictError(LedgerError):
    """Another write changed this output's review since the writer saw version `expected`;
    `current` is the review in force now. Nothing was written."""

    def __init__(self, current: Decision, expected: int) -> None:
        super().__init__(current, expected)
        self.current = current
        self.expected = expected

    def __str__(self) -> str:
        c = self.current
        now = c.decision or "unreviewed"
        return (
            f"{c.key} output {c.index}: changed by {c.reviewer or 'someone'} since version"
            f" {self.expected} (now version {c.version}: {now})"
        )


class UnknownOutputError(LedgerError, KeyError):
    """No output image has this item key and index."""

    def __str__(self) -> str:
        key, index = self.args
        return f"no output {index} of item {key!r}"


class NothingToUndoError(LedgerError):
    """The output's review has no decision or note left to undo."""


def decisions_in(conn: sqlite3.Connection, since: int = 0) -> dict[tuple[str, int], Decision]:
    """The reviews in force of existing outputs (changed after event `since`), read on `conn`
    (the report reads them in its own snapshot). ``sqlite3.OperationalError`` on a ledger from
    before m008_reviews."""
    rows = conn.execute(f"{_CURRENT} AND r.id > ? ORDER BY o.item_key, o.idx", (since,))
    return {(row[0], row[1]): _decision(row) for row in rows}


def counts_in(conn: sqlite3.Connection) -> ReviewCounts:
    """`Reviews.review_counts`, read on `conn`."""
    row = conn.execute(
        f"SELECT count(*), sum(r.decision = 'approved' AND {_IN_FORCE}),"
        f" sum(r.decision = 'rejected' AND {_IN_FORCE}) {_OUTPUTS}"
    ).fetchone()
    total, approved, rejected = (int(v or 0) for v in row)
    return ReviewCounts(approved, rejected, total - approved - rejected)


def _decision(row: sqlite3.Row | tuple[Any, ...]) -> Decision:
    """A `_CURRENT` row; a decision about another sha256 than the output's is not in force."""
    key, index, out_sha, version, event, decision, note, reviewer, decided_at, sha = row
    if sha != out_sha:
        return Decision(key, index, version=version, event=event)
    return Decision(key, index, decision, note, reviewer, decided_at, version, event)


class Reviews:
    """Reviews of one ledger (`Ledger.reviews`): short reads and writes under its lock."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock: threading.RLock,
        clock: Callable[[], float],
        path: Path | None = None,
    ) -> None:
        self._conn = conn
        self._lock = lock
        self._clock = clock
        self._path = path  # the ledger's file, for messages

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn, self._lock, self._path)

    # --- writes ----------------------------------------------------------------------------

    def decide(
        self,
        key: str,
        index: int,
        decision: Verdict,
        note: str | None = None,
        *,
        reviewer: str,
        expect_version: int | None = None,
    ) -> Decision:
        """Approve or reject output `index` of item `key` (`note` None keeps the note in force).
        With `expect_version`, refused (`ReviewConflictError`) unless the review is still at
        that version. `UnknownOutputError` when there is no such output; `ValueError` for a
        decision, note or reviewer that cannot be stored."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        return self._change("decide", key, index, reviewer, expect_version, decision, note)

    def set_note(
        self,
        key: str,
        index: int,
        note: str,
        *,
        reviewer: str,
        expect_version: int | None = None,
    ) -> Decision:
        """Set the note of output `index` of item `key`, keeping its decision (as `decide`)."""
        return self._change("note", key, index, reviewer, expect_version, None, note)

    def undo(
        self, key: str, index: int, *, reviewer: str, expect_version: int | None = None
    ) -> Decision:
        """Undo the output's latest decision or note not undone yet: the review before it is in
        force again (a new version, recorded as an ``undo`` event by `reviewer`).
        `NothingToUndoError` when there is none; `ReviewConflictError` as for `decide`."""
        actor = check_reviewer(reviewer)
        with self._tx() as conn:
            current, sha = self._current(conn, key, index, expect_version)
            target = conn.execute(
                "SELECT id, version FROM reviews AS e WHERE item_key = ? AND idx = ?"
                " AND action != 'undo' AND NOT EXISTS (SELECT 1 FROM reviews AS u"
                " WHERE u.item_key = e.item_key AND u.idx = e.idx AND u.undoes = e.id)"
                " ORDER BY id DESC LIMIT 1",
                (key, index),
            ).fetchone()
            if target is None:
                raise NothingToUndoError(f"{key} output {index}: nothing to undo")
            before = conn.execute(
                f"SELECT {_STATE} FROM reviews WHERE item_key = ? AND idx = ? AND version = ?",
                (key, index, target[1] - 1),
            ).fetchone()
            state = tuple(before) if before is not None else (None, "", None, None, sha)
            return self._write(conn, current, "undo", actor, state, undoes=target[0])

    def _change(
        self,
        action: Literal["decide", "note"],
        key: str,
        index: int,
        reviewer: str,
        expect_version: int | None,
        decision: Verdict | None,
        note: str | None,
    ) -> Decision:
        actor = check_reviewer(reviewer)
        text = None if note is None else _note(note)
        with self._tx() as conn:
            current, sha = self._current(conn, key, index, expect_version)
            now = self._clock()
            if action == "note":
                decided = (current.decision, text, current.reviewer or actor, current.decided_at)
            else:
                decided = (decision, current.note if text is None else text, actor, now)
            state = (*decided, sha)
            return self._write(conn, current, action, actor, state, undoes=None, at=now)

    def _current(
        self, conn: sqlite3.Connection, key: str, index: int, expect_version: int | None
    ) -> tuple[Decision, str]:
        """The review in force and the output's sha256, checked against `expect_version`."""
        row = conn.execute(
            "SELECT sha256 FROM outputs WHERE item_key = ? AND idx = ?", (key, index)
        ).fetchone()
        if row is None:
            raise UnknownOutputError(key, index)
        found = conn.execute(f"{_CURRENT} AND r.item_key = ? AND r.idx = ?", (key, index))
        hit = found.fetchone()
        current = _decision(hit) if hit is not None else Decision(key, index)
        if expect_version is not None and expect_version != current.version:
            raise ReviewConflictError(current, expect_version)
        return current, str(row[0])

    def _write(
        self,
        conn: sqlite3.Connection,
        current: Decision,
        action: str,
        actor: str,
        state: tuple[Any, ...],
        *,
        undoes: int | None,
        at: float | None = None,
    ) -> Decision:
        """Append the event, whose `state` (decision, note, reviewer, decided_at, sha256) is in
        force as the output's next version."""
        key, index, version = current.key, current.index, current.version + 1
        at = self._clock() if at is None else at
        event = conn.execute(
            "INSERT INTO reviews (item_key, idx, version, action, actor, at, undoes,"
            f" {_STATE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, index, version, action, actor, at, undoes, *state),
        ).lastrowid
        decision, note, reviewer, decided_at, _sha = state
        return Decision(key, index, decision, note, reviewer, decided_at, version, int(event or 0))

    # --- reads -----------------------------------------------------------------------------

    def decision(self, key: str, index: int) -> Decision:
        """The review in force of one output (unreviewed, version 0, if never reviewed)."""
        with self._lock:
            row = self._conn.execute(
                f"{_CURRENT} AND r.item_key = ? AND r.idx = ?", (key, index)
            ).fetchone()
        return Decision(key, index) if row is None else _decision(row)

    def decisions(self, since: int = 0) -> dict[tuple[str, int], Decision]:
        """(item key, output index) → the review in force, for every existing output ever
        reviewed (those changed after event `since`, given the last `last_event()` seen)."""
        with self._lock:
            return decisions_in(self._conn, since)

    def last_event(self) -> int:
        """The id of the latest review event (0: none yet)."""
        with self._lock:
            row = self._conn.execute("SELECT max(id) FROM reviews").fetchone()
        return int(row[0] or 0)

    def history(self, key: str, index: int) -> list[ReviewEvent]:
        """Every event of one output's review, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id, action, actor, at, undoes, version, {_STATE} FROM reviews"
                " WHERE item_key = ? AND idx = ? ORDER BY id",
                (key, index),
            ).fetchall()
        return [
            ReviewEvent(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                Decision(key, index, r[6], r[7], r[8], r[9], r[5], r[0]),
            )
            for r in rows
        ]

    def review_counts(self) -> ReviewCounts:
        """Output images of completed items: approved, rejected, and the rest (unreviewed)."""
        with self._lock:
            return counts_in(self._conn)

    def accepted_items(self) -> list[str]:
        """Keys of completed items whose every output image is approved (in key order)."""
        return self._keys(f"sum(r.decision = 'approved' AND {_IN_FORCE}) = count(*)")

    def rejected_items(self) -> list[str]:
        """Keys of completed items with at least one rejected output image (in key order)."""
        return self._keys(f"sum(r.decision = 'rejected' AND {_IN_FORCE}) > 0")

    def accepted_outputs(self) -> list[tuple[str, int, str]]:
        """Every approved output image of a completed item: (key, index, path)."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT o.item_key, o.idx, o.path {_OUTPUTS}"
                f" WHERE r.decision = 'approved' AND {_IN_FORCE} ORDER BY o.item_key, o.idx"
            ).fetchall()
        return [(str(k), int(i), str(p)) for k, i, p in rows]

    def _keys(self, having: str) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT o.item_key {_OUTPUTS} GROUP BY o.item_key HAVING {having}"
                " ORDER BY o.item_key"
            ).fetchall()
        return [str(row[0]) for row in rows]


def check_reviewer(name: str) -> str:
    """A reviewer's name as stored (spaces collapsed); `ValueError` if empty, too long or not
    printable."""
    text = " ".join(name.split())
    if not text or len(text) > REVIEWER_CHARS or not text.isprintable():
        raise ValueError(f"reviewer: 1 to {REVIEWER_CHARS} printable characters, not {name!r}")
    return text


def _note(note: str) -> str:
    text = note.strip()
    if len(text) > NOTE_CHARS:
        raise ValueError(f"note: at most {NOTE_CHARS} characters (got {len(text)})")
    if any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t" for c in text):
        raise ValueError("note: no control characters but tab and newline")
    return text
