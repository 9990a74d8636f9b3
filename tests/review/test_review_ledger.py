"""The ledger's reviews: decide, note, undo, counts, and several reviewers at once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from batch.ledger import Ledger
from batch.ledger import migrations as mig
from batch.ledger.reviews import (
    NothingToUndoError,
    ReviewConflictError,
    ReviewCounts,
    UnknownOutputError,
)
from batch.report.sheet import write_report
from batch.report.status import review_lines


def test_decide_note_undo_walks_the_history_back(outputs):
    """Each write is a new version and an event; undo restores the review before the latest
    decision or note not undone yet, one step at a time, down to unreviewed."""
    with Ledger.open(outputs({"a": 1})) as ledger:
        reviews = ledger.reviews
        assert reviews.decision("a", 0).version == 0
        first = reviews.decide("a", 0, "approved", "crisp", reviewer="alice", expect_version=0)
        assert (first.decision, first.note, first.reviewer, first.version) == (
            "approved",
            "crisp",
            "alice",
            1,
        )
        second = reviews.decide("a", 0, "rejected", reviewer="bob", expect_version=1)
        assert (second.decision, second.note, second.version) == ("rejected", "crisp", 2)
        noted = reviews.set_note("a", 0, "hands look wrong", reviewer="carol", expect_version=2)
        assert (noted.decision, noted.reviewer, noted.note) == (
            "rejected",
            "bob",
            "hands look wrong",
        )

        back = reviews.undo("a", 0, reviewer="alice", expect_version=3)
        assert (back.decision, back.note, back.version) == ("rejected", "crisp", 4)
        back = reviews.undo("a", 0, reviewer="alice")
        assert (back.decision, back.reviewer, back.version) == ("approved", "alice", 5)
        back = reviews.undo("a", 0, reviewer="alice")
        assert (back.decision, back.note, back.version) == (None, "", 6)
        with pytest.raises(NothingToUndoError):
            reviews.undo("a", 0, reviewer="alice")

        history = reviews.history("a", 0)
        assert [e.action for e in history] == ["decide", "decide", "note", "undo", "undo", "undo"]
        assert [e.state.version for e in history] == [1, 2, 3, 4, 5, 6]
        assert [e.undoes for e in history[3:]] == [history[2].id, history[1].id, history[0].id]
        assert reviews.decision("a", 0) == back


def test_a_decision_after_an_undo_is_undone_before_older_ones(outputs):
    """Undo is a stack: decide, undo, decide again, undo → back to before the first."""
    with Ledger.open(outputs({"a": 1})) as ledger:
        reviews = ledger.reviews
        reviews.decide("a", 0, "approved", reviewer="alice")
        reviews.undo("a", 0, reviewer="alice")
        reviews.decide("a", 0, "rejected", reviewer="alice")
        assert reviews.undo("a", 0, reviewer="alice").decision is None
        with pytest.raises(NothingToUndoError):
            reviews.undo("a", 0, reviewer="alice")


def test_counts_accepted_and_rejected_items_per_output(outputs):
    """An item is accepted when every output is approved; counts are per output image of
    completed items."""
    with Ledger.open(outputs({"a": 1, "b": 2, "c": 2, "d": 1})) as ledger:
        reviews = ledger.reviews
        assert reviews.review_counts() == ReviewCounts(0, 0, 6)
        reviews.decide("a", 0, "approved", reviewer="alice")
        reviews.decide("b", 0, "approved", reviewer="alice")
        reviews.decide("b", 1, "approved", reviewer="alice")
        reviews.decide("c", 0, "approved", reviewer="alice")
        reviews.decide("c", 1, "rejected", reviewer="alice")
        assert reviews.review_counts() == ReviewCounts(approved=4, rejected=1, unreviewed=1)
        assert reviews.accepted_items() == ["a", "b"]
        assert reviews.rejected_items() == ["c"]
        assert reviews.accepted_outputs() == [
            ("a", 0, "images/a_0.png"),
            ("b", 0, "images/b_0.png"),
            ("b", 1, "images/b_1.png"),
            ("c", 0, "images/c_0.png"),
        ]
        assert review_lines(ledger) == [
            "reviewed: 4 approved, 1 rejected, 1 to review",
            "  rejected: c",
        ]


def test_status_says_nothing_of_reviews_before_any(outputs):
    with Ledger.open(outputs({"a": 1})) as ledger:
        assert review_lines(ledger) == []


def test_bad_writes_are_refused_before_anything_is_written(outputs):
    with Ledger.open(outputs({"a": 1})) as ledger:
        reviews = ledger.reviews
        with pytest.raises(UnknownOutputError):
            reviews.decide("a", 1, "approved", reviewer="alice")
        with pytest.raises(UnknownOutputError):
            reviews.decide("nope", 0, "approved", reviewer="alice")
        with pytest.raises(ValueError, match="decision"):
            reviews.decide("a", 0, "maybe", reviewer="alice")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="reviewer"):
            reviews.decide("a", 0, "approved", reviewer="  ")
        with pytest.raises(ValueError, match="reviewer"):
            reviews.decide("a", 0, "approved", reviewer="a\x1bb")
        with pytest.raises(ValueError, match="note"):
            reviews.set_note("a", 0, "x" * 2001, reviewer="alice")
        with pytest.raises(ValueError, match="control"):
            reviews.set_note("a", 0, "bad\x00note", reviewer="alice")
        assert reviews.last_event() == 0 and reviews.decisions() == {}


def test_a_stale_write_is_refused_with_the_decision_in_force(tmp_path: Path, outputs):
    """Two reviewers on two connections: the one who saw an older version gets a conflict
    that carries the other's decision; nothing is overwritten, and both writes are kept."""
    out = outputs({"a": 1})
    with Ledger.open(out) as alice, Ledger.open(out) as bob:
        seen = alice.reviews.decision("a", 0).version
        assert bob.reviews.decision("a", 0).version == seen == 0
        bob.reviews.decide("a", 0, "rejected", "blurry", reviewer="bob", expect_version=seen)
        with pytest.raises(ReviewConflictError) as caught:
            alice.reviews.decide("a", 0, "approved", reviewer="alice", expect_version=seen)
        current = caught.value.current
        assert (current.decision, current.reviewer, current.note, current.version) == (
            "rejected",
            "bob",
            "blurry",
            1,
        )
        assert "bob" in str(caught.value)
        assert alice.reviews.decision("a", 0).decision == "rejected"  # nothing written
        with pytest.raises(ReviewConflictError):
            alice.reviews.undo("a", 0, reviewer="alice", expect_version=0)
        # Alice saw Bob's decision; deciding over it now is deliberate, and both stay in history.
        alice.reviews.decide("a", 0, "approved", reviewer="alice", expect_version=1)
        assert [(e.actor, e.state.decision) for e in bob.reviews.history("a", 0)] == [
            ("bob", "rejected"),
            ("alice", "approved"),
        ]


def test_many_reviewers_at_once_lose_nothing(outputs):
    """Eight threads, each on its own connection, decide the same outputs 25 times, retrying
    on conflict with the version the conflict names: every write lands exactly once, versions
    1..N with no gap or repeat."""
    out = outputs({"a": 1, "b": 1})
    workers, each = 8, 25
    errors: list[BaseException] = []

    def review(name: str) -> None:
        try:
            with Ledger.open(out) as ledger:
                reviews = ledger.reviews
                for n in range(each):
                    key = "ab"[n % 2]
                    seen = reviews.decision(key, 0).version
                    verdict = "approved" if n % 3 else "rejected"
                    while True:
                        try:
                            reviews.decide(key, 0, verdict, reviewer=name, expect_version=seen)
                            break
                        except ReviewConflictError as exc:
                            seen = exc.current.version
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=review, args=(f"r{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Ledger.open(out) as ledger:
        reviews = ledger.reviews
        per_key = {key: reviews.history(key, 0) for key in "ab"}
        total = sum(len(h) for h in per_key.values())
        assert total == workers * each
        for key, history in per_key.items():
            assert [e.state.version for e in history] == list(range(1, len(history) + 1))
            assert reviews.decision(key, 0).version == len(history)
        by_reviewer = {f"r{i}": 0 for i in range(workers)}
        for history in per_key.values():
            for event in history:
                by_reviewer[event.actor] += 1
        assert set(by_reviewer.values()) == {each}


def test_a_redone_output_is_unreviewed_again(outputs):
    """A decision is about the output's bytes: after the item is redone (new sha256), its new
    output is unreviewed, the version goes on, and the old decision stays in the history."""
    out = outputs({"a": 1})
    with Ledger.open(out) as ledger:
        ledger.reviews.decide("a", 0, "rejected", "bad", reviewer="alice")
    outputs({"a": 1}, seed=5)  # the item redone: a new output image
    with Ledger.open(out) as ledger:
        reviews = ledger.reviews
        now = reviews.decision("a", 0)
        assert (now.decision, now.note, now.version) == (None, "", 1)
        assert reviews.review_counts() == ReviewCounts(0, 0, 1)
        assert reviews.rejected_items() == []
        with pytest.raises(ReviewConflictError):
            reviews.decide("a", 0, "approved", reviewer="alice", expect_version=0)
        assert reviews.decide("a", 0, "approved", reviewer="alice", expect_version=1).version == 2
        assert reviews.accepted_items() == ["a"]
        assert [e.state.decision for e in reviews.history("a", 0)] == ["rejected", "approved"]


def test_an_existing_ledger_is_migrated_and_keeps_its_items(tmp_path: Path, monkeypatch, outputs):
    """A ledger written before m008 (its report too) gets the review tables on open, with its
    items and outputs as they were."""
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(mig, "MIGRATIONS", [m for m in mig.MIGRATIONS if m[0] != "m008_reviews"])
        assert outputs({"a": 2, "b": 1}) == out
        with Ledger.open(out) as ledger:
            assert "m008_reviews" not in ledger.applied_migrations()
    old = write_report(out, title="old")  # a report of a ledger without reviews
    assert old.reviews is None
    assert 'data-reviews="none"' in old.path.read_text(encoding="utf-8")

    with Ledger.open(out) as ledger:
        assert ledger.applied_migrations()[-1] == "m008_reviews"
        assert ledger.counts()["completed"] == 2 and len(ledger.outputs("a")) == 2
        assert ledger.reviews.review_counts() == ReviewCounts(0, 0, 3)
        ledger.reviews.decide("a", 1, "approved", reviewer="alice")
    conn = sqlite3.connect(out / "ledger.sqlite")
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "reviews" in tables
        assert conn.execute("SELECT count(*) FROM reviews").fetchone() == (1,)
    finally:
        conn.close()
