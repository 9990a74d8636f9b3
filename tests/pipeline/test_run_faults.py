"""Runs under injected faults: every item completes, and nothing accepted is submitted twice.
A submit whose answer was lost is found in fal's request history (`recovered`); only one the
history does not show is sent again (recorded on the item as possible_duplicate)."""

import logging

from support import TEST_KEY

from batch.errors import ExitCode
from batch.ledger import Ledger, request_hash
from batch.sim import FaultPlan, FaultRule


def _rules(*rules: FaultRule) -> FaultPlan:
    return FaultPlan(seed=11, rules=list(rules))


def _check_no_resubmission(sim, out, n: int) -> int:
    """Every item completed; extra submits only where the ledger says possible_duplicate."""
    duplicates = 0
    with Ledger.open(out) as ledger:
        assert ledger.counts()["completed"] == n
        for i in range(n):
            row = ledger.get(f"item{i:03d}")
            assert row is not None and row.state == "completed"
            submits = sim.counters.submits_for(row.endpoint, row.payload)
            assert request_hash(row.endpoint, row.payload) == row.request_hash
            if row.possible_duplicate:
                duplicates += 1
                assert submits >= 1
            else:
                assert submits == 1, f"{row.key} was submitted {submits} times"
    return duplicates


async def test_storm_of_transport_faults_loses_nothing(runner):
    """429s, 5xx, dropped connections on every route, lost submit answers, slow answers."""
    sim = await runner.start(
        faults=_rules(
            FaultRule(kind="rate_limit", route="submit", rate=0.15, retry_after=0.01),
            FaultRule(kind="drop_after", route="submit", rate=0.1),
            FaultRule(kind="drop_before", route="submit", rate=0.05),
            FaultRule(kind="http_error", route="submit", status=503, rate=0.1),
            FaultRule(kind="http_error", route="status", status=500, rate=0.1),
            FaultRule(kind="drop_before", route="status", rate=0.05),
            FaultRule(kind="http_error", route="result", status=502, rate=0.1),
            FaultRule(kind="drop_before", route="result", rate=0.05),
            FaultRule(kind="slow", route="any", rate=0.02, delay=0.05),
        )
    )
    n = 40
    summary = await runner.run(runner.spec(runner.manifest(n)))
    assert summary.exit_code == ExitCode.OK, summary.text()
    duplicates = _check_no_resubmission(sim, runner.tmp / "out", n)
    lost = sim.counters.faults_injected("drop_after")
    assert lost >= 1
    # Every accepted submit whose answer was lost was found in the history, not paid again;
    # the flagged ones are the submits that never reached the queue (drop_before).
    assert summary.stats["recovered"] >= lost
    assert summary.stats["recovered"] + summary.stats["possible_duplicates"] >= lost
    # (an item whose submits were lost twice is flagged once, and counted twice)
    assert duplicates <= summary.stats["possible_duplicates"]
    assert sim.counters.paid_twice == 0
    assert summary.stats["rate_limited"] == sim.counters.faults_injected("rate_limit")


async def test_failed_downloads_are_retried_without_resubmitting(runner):
    sim = await runner.start(
        faults=_rules(
            FaultRule(kind="drop_before", route="files", rate=0.3),
            FaultRule(kind="http_error", route="files", status=503, rate=0.2),
        )
    )
    summary = await runner.run(runner.spec(runner.manifest(15)))
    assert summary.exit_code == ExitCode.OK
    assert _check_no_resubmission(sim, runner.tmp / "out", 15) == 0
    assert sim.counters.faults_injected(route="files") >= 1


async def test_transient_job_errors_are_resubmitted(runner):
    """A job that ended in a runner failure is submitted again, up to the attempt limit."""
    sim = await runner.start(
        faults=_rules(FaultRule(kind="job_error", route="submit", transient=True, rate=0.3))
    )
    summary = await runner.run(runner.spec(runner.manifest(20)))
    assert summary.exit_code == ExitCode.OK
    failed_jobs = sum(1 for job in sim.jobs if job.error_type)
    assert failed_jobs >= 1
    assert sim.counters.accepted_submits == 20 + failed_jobs
    assert summary.stats["retried"] == failed_jobs


async def test_expired_results_are_submitted_again(runner):
    sim = await runner.start(faults=_rules(FaultRule(kind="expire", route="result", max=2)))
    summary = await runner.run(runner.spec(runner.manifest(6)))
    assert summary.exit_code == ExitCode.OK
    assert sim.counters.accepted_submits == 8


async def test_deadline_cancels_then_uses_the_result_of_a_request_that_finished_anyway(runner):
    """An item past its deadline is cancelled at fal; a cancel only signals, and the request
    that completes anyway is paid for, so its result is used instead of a second submit."""
    sim = await runner.start(
        capacity=1,
        faults=_rules(FaultRule(kind="slow", route="status", delay=0.4, max=1)),
    )
    summary = await runner.run(runner.spec(runner.manifest(2), deadline=0.2))
    assert summary.exit_code == ExitCode.OK
    assert sim.counters.requests_for("cancel") == 1
    assert sim.counters.accepted_submits == 2
    assert summary.stats["cancelled"] == 1 and summary.stats["completed_after_cancel"] == 1


async def test_auth_failure_stops_the_run(runner, caplog):
    """401: exit 3 at once, nothing retried, and the key appears nowhere."""
    from batch.fal import Credentials

    sim = await runner.start()
    wrong = "wrong-key-0xdeadbeef"
    with caplog.at_level(logging.DEBUG):
        summary = await runner.run(runner.spec(runner.manifest(5)), credentials=Credentials(wrong))
    assert summary.exit_code == ExitCode.AUTH
    assert "refused by fal" in summary.message and wrong not in summary.message
    assert sim.counters.requests_for("submit") <= 8  # stopped, not retried per item
    assert wrong not in caplog.text and TEST_KEY not in caplog.text


async def test_key_never_written_or_logged(runner, caplog, capsys):
    """After a run with faults, no file under the output folder and no log line has the key."""
    await runner.start(faults=_rules(FaultRule(kind="http_error", route="any", rate=0.1)))
    with caplog.at_level(logging.DEBUG):
        summary = await runner.run(runner.spec(runner.manifest(8)))
    assert summary.exit_code == ExitCode.OK
    captured = capsys.readouterr()
    for path in (runner.tmp / "out").rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path
    assert TEST_KEY not in caplog.text + captured.out + captured.err + summary.text()
