"""Group commit: transitions asked for within a few milliseconds share one transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from test_ledger import items

import batch.ledger.group as group_module
from batch.ledger import InvalidTransitionError, Ledger
from batch.ledger.group import GroupCommit
from batch.pipeline.webhook_wait import WebhookWaits


def _states(out: Path) -> dict[str, tuple[str, str | None]]:
    """Item states as another connection sees them: only what is committed."""
    with sqlite3.connect(out / "ledger.sqlite") as conn:
        rows = conn.execute("SELECT key, state, request_id FROM items ORDER BY key")
        return {key: (state, rid) for key, state, rid in rows}


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger.open(tmp_path) as ledger:
        ledger.plan(items(5))
        yield ledger


async def test_writes_of_one_turn_are_one_commit_and_committed_when_awaited(ledger, tmp_path):
    group = GroupCommit(ledger, window=0)

    async def submit(key: str) -> tuple[str, str | None]:
        await group.write(lambda: ledger.mark_submitted(key, f"r-{key}", None, None, None))
        return _states(tmp_path)[key]  # committed: visible from another connection

    seen = await asyncio.gather(*(submit(f"k{i:04d}") for i in range(5)))

    assert seen == [("submitted", f"r-k{i:04d}") for i in range(5)]
    assert (group.commits, group.writes) == (1, 5)
    await group.write(lambda: ledger.mark_ambiguous("k0000"))
    assert group.commits == 2  # a later turn: a transaction of its own


async def test_writes_within_the_window_share_a_commit_and_a_full_group_goes_at_once(
    ledger, tmp_path, monkeypatch
):
    group = GroupCommit(ledger, window=30.0)  # longer than the test: only the cap commits
    monkeypatch.setattr(group_module, "MAX_GROUP", 3)

    async def submit(i: int) -> None:
        for _ in range(i):
            await asyncio.sleep(0)  # asked for in different turns of the loop
        await group.write(lambda: ledger.mark_submitted(f"k{i:04d}", f"r{i}", None, None, None))

    await asyncio.gather(*(submit(i) for i in range(3)))

    assert (group.commits, group.writes) == (1, 3)
    assert {_states(tmp_path)[f"k{i:04d}"][0] for i in range(3)} == {"submitted"}


async def test_a_refused_transition_fails_alone(ledger, tmp_path):
    group = GroupCommit(ledger, window=0)
    ledger.mark_failed("k0001", "permanent", "no")

    results = await asyncio.gather(
        group.write(lambda: ledger.mark_submitted("k0000", "r0", None, None, None)),
        group.write(lambda: ledger.mark_submitted("k0001", "r1", None, None, None)),
        group.write(lambda: ledger.mark_submitted("k0002", "r2", None, None, None)),
        return_exceptions=True,
    )

    assert results[0] is None and results[2] is None
    assert isinstance(results[1], InvalidTransitionError)
    states = _states(tmp_path)
    assert states["k0000"] == ("submitted", "r0") and states["k0002"] == ("submitted", "r2")
    assert states["k0001"] == ("failed", None)
    assert group.commits == 1


async def test_a_database_error_commits_nothing_of_the_group(ledger, tmp_path):
    """When SQLite itself gives up the group's transaction (as after a full disk or an I/O
    error), no transition of the group is committed and every caller learns why."""
    group = GroupCommit(ledger, window=0)

    def broken() -> None:
        ledger._conn.execute("ROLLBACK")  # what SQLite does to the transaction on such errors
        raise sqlite3.OperationalError("disk I/O error")

    results = await asyncio.gather(
        group.write(lambda: ledger.mark_submitted("k0000", "r0", None, None, None)),
        group.write(broken),
        return_exceptions=True,
    )

    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    assert _states(tmp_path)["k0000"] == ("pending", None)  # rolled back with the group
    assert group.commits == 0
    await group.write(lambda: ledger.mark_submitted("k0000", "r0", None, None, None))
    assert _states(tmp_path)["k0000"] == ("submitted", "r0")  # the ledger works on


async def test_a_cancelled_caller_still_has_its_transition_committed(ledger, tmp_path):
    """A request id handed over is recorded even if the item's task is cancelled meanwhile
    (a second Ctrl-C): the next run re-attaches to it instead of submitting again."""
    group = GroupCommit(ledger, window=30.0)  # only the flush commits in this test
    task = asyncio.create_task(
        group.write(lambda: ledger.mark_submitted("k0003", "r3", None, None, None))
    )
    await asyncio.sleep(0)  # the write is queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _states(tmp_path)["k0003"] == ("pending", None)

    group.flush()  # what the runner does before it closes the ledger

    assert _states(tmp_path)["k0003"] == ("submitted", "r3")


async def test_a_webhook_for_a_request_id_not_yet_committed_is_accepted(ledger):
    """fal may post a result before the run has committed the request id it just got: the
    receiver commits the queued transitions and finds it, instead of refusing the delivery."""
    group = GroupCommit(ledger, window=30.0)
    waits = WebhookWaits(ledger, group, safety_net=5.0)
    queued = asyncio.create_task(
        group.write(lambda: ledger.mark_submitted("k0004", "r-early", None, None, None))
    )
    await asyncio.sleep(0)  # queued, not committed

    assert waits.accepts("r-early")
    await queued  # committed by the receiver's flush
    assert not waits.accepts("r-unknown")


async def test_an_unexpected_error_in_one_transition_fails_only_its_caller(ledger, tmp_path):
    """A transition that raises something else than a refusal (an OverflowError from a huge
    number, an IntegrityError) is rolled back to its own savepoint: the request ids the other
    transitions of the group recorded are committed, not lost with it."""
    group = GroupCommit(ledger, window=0)

    def overflow() -> None:
        ledger.mark_completed("k0001", [], seed=2**80, timings=None, nsfw=None)

    def half_written() -> None:  # writes, then fails: its write must not stay
        ledger.mark_submitted("k0003", "r3", None, None, None)
        ledger._conn.execute("INSERT INTO meta (name, value) VALUES ('x', NULL)")

    ledger.mark_submitted("k0001", "r1", None, None, None)
    results = await asyncio.gather(
        group.write(lambda: ledger.mark_submitted("k0000", "r0", None, None, None)),
        group.write(overflow),
        group.write(half_written),
        group.write(lambda: ledger.mark_submitted("k0002", "r2", None, None, None)),
        return_exceptions=True,
    )

    assert results[0] is None and results[3] is None
    assert isinstance(results[1], OverflowError)
    assert isinstance(results[2], sqlite3.IntegrityError)
    states = _states(tmp_path)
    assert states["k0000"] == ("submitted", "r0") and states["k0002"] == ("submitted", "r2")
    assert states["k0001"] == ("submitted", "r1")  # the failed completion left it as it was
    assert states["k0003"] == ("pending", None)  # rolled back to its savepoint
    assert group.commits == 1 and (group.writes, ledger.get_meta("x")) == (4, None)
    await group.write(lambda: ledger.mark_submitted("k0003", "r3", None, None, None))
    assert _states(tmp_path)["k0003"] == ("submitted", "r3")
