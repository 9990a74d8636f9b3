"""Submits whose answer is lost after fal accepted them (`drop_after`), over real sockets: the
run finds each in the simulator's request history and re-attaches it — never pays twice —
in every wait mode; it sends an item again (flagged) only when the history cannot show it."""

from __future__ import annotations

import csv
import logging

import pytest
from support import TEST_KEY, item_rows, write_csv

from batch.errors import ExitCode
from batch.ledger import Ledger
from batch.sim import FaultPlan, FaultRule


def _drops(count: int, *more: FaultRule, rate: float = 0.5) -> FaultPlan:
    drop = FaultRule(kind="drop_after", route="submit", rate=rate, max=count)
    return FaultPlan(seed=3, rules=[drop, *more])


def _rows(runner, n: int) -> dict[str, object]:
    with Ledger.open(runner.tmp / "out") as ledger:
        return {row.key: row for row in (ledger.get(r["id"]) for r in item_rows(n))}


@pytest.mark.parametrize("wait", ["poll", "stream"])
async def test_lost_answers_are_found_in_the_history_and_never_paid_twice(runner, wait):
    sim = await runner.start(faults=_drops(4))
    n = 16
    summary = await runner.run(runner.spec(runner.manifest(n), wait=wait))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert sim.counters.faults_injected("drop_after") == 4
    assert summary.stats["recovered"] == summary.recovered == 4
    assert summary.stats["possible_duplicates"] == summary.possible_duplicates == 0
    assert sim.counters.accepted_submits == n  # one accepted submit per item
    assert sim.counters.paid_twice == 0
    assert "4 submits whose answer was lost were found in fal's request history" in (summary.text())
    rows = _rows(runner, n)
    recovered = [r for r in rows.values() if r.recovered]
    assert len(recovered) == 4
    assert all(r.state == "completed" and not r.possible_duplicate for r in recovered)
    with open(runner.tmp / "out" / "results.csv", newline="", encoding="utf-8") as fh:
        marked = {row["key"] for row in csv.DictReader(fh) if row["recovered"] == "true"}
    assert marked == {r.key for r in recovered}
    # One look at the history serves several items; a few calls in all.
    assert 1 <= sim.counters.requests_for("history") <= 4 * 3


async def test_a_history_that_lists_requests_from_their_submit_is_used_too(runner):
    sim = await runner.start(faults=_drops(3), history_shows="sent", latency="fixed:0.3")
    summary = await runner.run(runner.spec(runner.manifest(9)))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.recovered == 3 and sim.counters.paid_twice == 0
    assert sim.counters.accepted_submits == 9


async def test_a_history_behind_by_a_lag_is_waited_for_within_the_bound(runner):
    sim = await runner.start(faults=_drops(2), history_lag_s=0.6)
    summary = await runner.run(runner.spec(runner.manifest(6)))
    assert summary.recovered == 2 and sim.counters.paid_twice == 0
    assert sim.counters.requests_for("history") >= 2  # the first look found nothing yet


async def test_without_stored_payloads_an_item_is_sent_again_and_flagged(runner):
    """`store_io: false`: fal keeps no payloads to match, so nothing is looked up."""
    sim = await runner.start(faults=_drops(2))
    summary = await runner.run(runner.spec(runner.manifest(6), fal={"store_io": False}))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.recovered == 0 and summary.possible_duplicates == 2
    assert sim.counters.requests_for("history") == 0
    assert sim.counters.accepted_submits == 8  # the two lost ones were paid for twice


async def test_a_history_that_fails_past_the_bound_means_sent_again(runner, caplog):
    sim = await runner.start(
        faults=_drops(1, FaultRule(kind="http_error", route="history", status=503, rate=1.0))
    )
    with caplog.at_level(logging.INFO, logger="batch.run"):
        summary = await runner.run(runner.spec(runner.manifest(4), fal={"history_wait": 1.0}))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.recovered == 0 and summary.possible_duplicates == 1
    assert sim.counters.requests_for("history") >= 2  # looked again after each failure
    assert "did not answer" in caplog.text
    assert TEST_KEY not in caplog.text


async def test_a_history_route_that_is_not_there_turns_recovery_off_at_once(runner, caplog):
    """A proxy without fal's Platform API answers 404: nothing to wait for."""
    sim = await runner.start(faults=_drops(2))
    fal = {"history_wait": 600, "platform_url": f"{sim.url}/no-platform-here"}
    with caplog.at_level(logging.WARNING, logger="batch.run"):
        summary = await runner.run(runner.spec(runner.manifest(6), fal=fal))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.possible_duplicates == 2  # at once: the 600 s bound was not waited out
    assert sim.counters.requests_for("history") == 0
    assert "cannot be read" in caplog.text


async def test_identical_payloads_each_get_their_own_request(runner):
    """The same edit three times (no seed): interchangeable, but never one request for two."""
    sim = await runner.start(faults=_drops(2, rate=1.0))  # the first two answers are lost
    rows = [{**row, "prompt": "one edit"} for row in item_rows(3)]
    write_csv(runner.tmp / "same.csv", rows)
    summary = await runner.run(runner.spec(runner.tmp / "same.csv"))
    assert summary.exit_code == ExitCode.OK, summary.text()
    found = _rows(runner, 3)
    ids = [row.request_id for row in found.values()]
    assert len(set(ids)) == 3
    assert sim.counters.accepted_submits == 3
    assert summary.recovered == 2 and summary.possible_duplicates == 0
