"""Group commit for the event loop: item transitions asked for within a few milliseconds share
one transaction.

A busy run makes hundreds of transitions a second; committing each alone costs a BEGIN and a
COMMIT (file locks, a WAL append) per transition on the event loop's thread. `GroupCommit.write`
queues the transition and waits: `WINDOW` seconds after the first one queued (at once when
`MAX_GROUP` are queued) all run in one `Ledger.group` transaction, and each caller learns its
own outcome. The wait costs an item a few milliseconds per step, which the requests kept queued
at fal ahead of their slots (`queue_ahead`) absorb.

The caller does nothing else for its item until its transition is committed, so invariant 2 (a
request id is committed before anything else is awaited) holds as before: a crash before the
commit loses only what a crash between the answer and a lone commit would.

A transition that raises anything (a refused transition, an OverflowError from a huge number,
an IntegrityError) fails only its own caller; the others are committed. The transitions run one
after another in the group's transaction; when one raises, the whole group is rolled back and
run again with each transition in a SAVEPOINT of its own, the failing one rolled back to its
savepoint (a savepoint per transition costs two more statements each, so they are paid for only
when a transition fails: rarely, since transitions check before they write). Only when
the database itself fails — the COMMIT, or an error after which SQLite rolled the whole
transaction back (a full disk) — does every caller of the group get the error, and nothing of
it is committed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable

from batch.ledger.store import Ledger

WINDOW = 0.01  # seconds a transition may wait for others to join its transaction
MAX_GROUP = 500


class GroupCommit:
    """Commits `write(transition)` calls made within `window` seconds together."""

    def __init__(self, ledger: Ledger, window: float = WINDOW) -> None:
        self.ledger = ledger
        self.window = window
        self.commits = 0  # transactions made; `writes / commits` is the group size
        self.writes = 0
        self._queued: list[tuple[Callable[[], None], asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"GroupCommit(queued={len(self._queued)}, commits={self.commits})"

    async def write(self, transition: Callable[[], None]) -> None:
        """Run `transition` (a `Ledger` method call) in the group's transaction; return once
        that is committed, or raise what the transition (or the commit) raised."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        done.add_done_callback(_observed)  # a cancelled caller's failure is not an error
        self._queued.append((transition, done))
        if len(self._queued) >= MAX_GROUP:
            self._commit()
        elif self._timer is None:
            self._timer = loop.call_later(self.window, self._commit)
        # A cancelled caller cancels `done` but does not take its transition out of the
        # group: what it recorded (say, a request id) is committed all the same.
        await done

    def flush(self) -> None:
        """Commit what is queued now (before the ledger closes: a write whose caller was
        cancelled, say by a second Ctrl-C, is still committed)."""
        if self._queued:
            self._commit()

    def _commit(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queued, self._queued = self._queued, []
        outcomes: list[Exception | None] = [None] * len(queued)
        try:
            try:
                with self.ledger.group():
                    _straight(queued)
            except _OneFailed:  # rolled back: again, with each transition in a savepoint
                with self.ledger.group() as conn:
                    outcomes = [_in_savepoint(conn, transition) for transition, _ in queued]
        except Exception as exc:  # the database failed: nothing of the group is committed
            for _, done in queued:
                if not done.done():
                    done.set_exception(exc)
            return
        self.commits += 1
        self.writes += len(queued)
        for (_, done), outcome in zip(queued, outcomes, strict=True):
            if done.done():
                continue
            if outcome is None:
                done.set_result(None)
            else:
                done.set_exception(outcome)


class _OneFailed(Exception):
    """A transition of the group raised: the group is rolled back, to be run again."""


def _straight(queued: list[tuple[Callable[[], None], asyncio.Future[None]]]) -> None:
    for transition, _ in queued:
        try:
            transition()
        except Exception as exc:
            raise _OneFailed from exc


def _in_savepoint(conn: sqlite3.Connection, transition: Callable[[], None]) -> Exception | None:
    """Run one transition in a savepoint of the group's transaction: None when it succeeded,
    else what it raised, its changes rolled back. Raises when the group's transaction itself
    is gone (SQLite rolls back the whole transaction after some errors, such as a full disk)."""
    conn.execute("SAVEPOINT item")
    try:
        transition()
    except Exception as exc:
        if not conn.in_transaction:
            raise  # nothing of the group is left to commit: every caller learns why
        conn.execute("ROLLBACK TO item")
        conn.execute("RELEASE item")
        return exc
    conn.execute("RELEASE item")
    return None


def _observed(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()
