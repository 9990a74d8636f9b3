"""Whole runs against the simulator behaving as fal's live service does (fal-protocol.md §11):
each test names the row it proves, and asserts on money where money is at stake."""

import json

from support import TEST_KEY

import batch.pipeline.finish as finish_module
from batch.errors import ExitCode
from batch.ledger import Ledger
from batch.sim import FaultPlan, FaultRule, ManualClock

LOCKED = "User is locked. Reason: Exhausted balance"


def _rules(*rules: FaultRule) -> FaultPlan:
    return FaultPlan(seed=5, rules=list(rules))


async def test_a_locked_account_stops_admitting_collects_the_running_and_keeps_the_rest(runner):
    """§11 row 4: the balance runs out after 20 billed requests; the run stops at the first
    403, collects what was running, keeps the rest pending (nothing failed), exits 6, and says
    why in one line; `status` says the job waits on the account. Topped up, it finishes."""
    # 0.0325 $/MP × 16×12 px outputs: set the balance to exactly 20 requests' worth.
    per_request = 0.0325 * 16 * 12 / 1e6
    sim = await runner.start(balance_usd=20 * per_request, capacity=4)
    spec = runner.spec(runner.manifest(60), concurrency=4)

    summary = await runner.run(spec)

    assert summary.exit_code == ExitCode.ACCOUNT_LOCKED == 6
    assert LOCKED in summary.message and "top up" in summary.message
    assert sim.counters.responses_for("submit", 403) <= 3
    assert summary.counts["failed"] == 0 and summary.counts["submitted"] == 0
    assert summary.counts["completed"] == sim.counters.billed_requests
    assert summary.counts["completed"] + summary.counts["pending"] == 60
    assert sim.counters.paid_twice == 0
    with Ledger.open(runner.tmp / "out") as ledger:
        assert LOCKED in (ledger.get_meta("account_locked") or "")
        assert all(r.attempts <= 1 for r in ledger.iter_work())  # a 403 is not an attempt

    sim.billing.top_up(100)
    again = await runner.run(spec)
    assert again.exit_code == ExitCode.OK and again.counts["completed"] == 60
    assert sim.counters.paid_twice == 0
    with Ledger.open(runner.tmp / "out") as ledger:
        assert ledger.get_meta("account_locked") is None


async def test_an_error_fal_marks_not_retryable_is_never_sent_again(runner):
    """§11 row 3: `X-Fal-Retryable: false` on a 503 fails the item at once with fal's error
    type in the ledger, instead of a resubmit."""
    sim = await runner.start(
        faults=_rules(
            FaultRule(kind="job_error", route="submit", transient=True, retryable=False, max=2)
        )
    )
    summary = await runner.run(runner.spec(runner.manifest(4)))
    assert summary.exit_code == ExitCode.FAILED
    assert summary.counts == {"completed": 2, "failed": 2, "pending": 0, "submitted": 0}
    assert sim.counters.accepted_submits == 4  # none sent twice
    with Ledger.open(runner.tmp / "out") as ledger:
        failed = [r for r in (ledger.get(f"item{i:03d}") for i in range(4)) if r.state == "failed"]
    assert [r.error_kind for r in failed] == ["permanent", "permanent"]
    assert all(r.error_type == "runner_disconnected" for r in failed)


async def test_fals_own_retries_are_waited_for_not_resubmitted(runner):
    """§11 row 2: a request fal retries itself goes IN_PROGRESS → IN_QUEUE → IN_PROGRESS;
    the runner keeps waiting on the same request id."""
    sim = await runner.start(
        faults=_rules(FaultRule(kind="server_retry", route="submit", failures=2, rate=0.5))
    )
    summary = await runner.run(runner.spec(runner.manifest(10)))
    assert summary.exit_code == ExitCode.OK
    assert sim.counters.accepted_submits == 10 and summary.stats["retried"] == 0
    assert sim.counters.faults_injected("server_retry") >= 1


async def test_billable_units_are_recorded_and_spend_comes_from_them(runner):
    """§11 row 6 and 14: fal's units per item in the ledger and results.csv; the price comes
    from the (simulated) pricing API when the job has none, so the spend is units × price."""
    await runner.start()
    spec = runner.spec(runner.manifest(3), fal={"platform_url": runner.sim.url})
    summary = await runner.run(spec)
    assert summary.exit_code == ExitCode.OK
    with Ledger.open(runner.tmp / "out") as ledger:
        units = [ledger.get(f"item{i:03d}").billable_units for i in range(3)]
    assert units == [16 * 12 / 1e6] * 3
    spent = 3 * 16 * 12 / 1e6 * 0.0325
    assert summary.cost == [f"  spent: ${spent:.6f}".rstrip("0") + " (billed units at $0.03/MP)"]
    header = (runner.tmp / "out" / "results.csv").read_text().splitlines()[0]
    assert "billable_units" in header.split(",")


async def test_platform_headers_and_queue_length_reach_fal(runner):
    """§11 row 7: every platform setting of the job is sent with each submit."""
    sim = await runner.start()
    fal = {
        "runner_hint": "lora-a",
        "no_retry": True,
        "store_io": False,
        "media_expiration": "2h",
        "max_queue_length": 50,
    }
    summary = await runner.run(runner.spec(runner.manifest(2), fal=fal))
    assert summary.exit_code == ExitCode.OK
    assert sim.counters.sent("X-Fal-Runner-Hint", "lora-a") == 2
    assert sim.counters.sent("X-Fal-No-Retry", "1") == 2
    assert sim.counters.sent("X-Fal-Store-IO", "0") == 2
    lifecycle = json.dumps({"expiration_duration_seconds": 7200})
    assert sim.counters.sent("X-Fal-Object-Lifecycle-Preference", lifecycle) == 2
    assert sim.counters.sent("fal_max_queue_length", "50") == 2


async def test_an_expired_output_url_is_fetched_again_not_paid_again(runner, monkeypatch):
    """§11 row 11: output media expire; a download that finds its URL gone fetches the
    result again (fresh URLs) instead of submitting again. The simulator's clock jumps past
    the media expiration just before each item's first download."""
    clock = ManualClock()
    sim = await runner.start(clock=clock, media_expiration_s=60, media_renew_on_result=True)
    real = finish_module.download_image
    expired: set[str] = set()

    async def late(session, url, *args, **kwargs):
        if url not in expired:
            expired.add(url)
            clock.advance(120)  # the URL the result gave is now past its expiration
        return await real(session, url, *args, **kwargs)

    monkeypatch.setattr(finish_module, "download_image", late)
    summary = await runner.run(runner.spec(runner.manifest(2)))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert sim.counters.accepted_submits == 2 and sim.counters.paid_twice == 0
    assert sim.counters.requests_for("result") == 4  # each result fetched twice
    assert sim.counters.responses_for("files", 404) == 2


async def test_a_certificate_that_does_not_verify_fails_the_run_at_once(runner, tmp_path):
    """§11 row 12: a TLS verification failure is a configuration error (exit 7), never 300
    retries; with the CA bundle the same run works."""
    sim = await runner.start(tls=True)
    spec = runner.spec(runner.manifest(2))
    summary = await runner.run(spec)
    assert summary.exit_code == ExitCode.TLS == 7
    assert "certificate" in summary.message and "ca_bundle" in summary.message
    assert sim.counters.accepted_submits == 0 and summary.counts["failed"] == 0
    assert TEST_KEY not in summary.message
    fixed = runner.spec(runner.manifest(2), fal={"ca_bundle": str(sim.ca_file)})
    assert (await runner.run(fixed)).exit_code == ExitCode.OK


async def test_deadline_never_pays_twice_when_cancelled_requests_finish_anyway(runner):
    """§11 row 1: 10% of requests run 20× longer than the deadline allows. Each is cancelled,
    but a cancel only signals: the request finishes and is billed, and its result is used.
    Nothing is paid twice and no paid result is thrown away."""
    sim = await runner.start(
        capacity=20,
        latency="fixed:0.05",
        faults=_rules(FaultRule(kind="straggler", route="submit", factor=20, rate=0.1)),
    )
    summary = await runner.run(runner.spec(runner.manifest(60), concurrency=20, deadline=0.3))
    assert summary.exit_code == ExitCode.OK and summary.counts["completed"] == 60
    cancelled, used = summary.stats["cancelled"], summary.stats["completed_after_cancel"]
    assert sim.counters.faults_injected("straggler") >= 1 and used >= 1
    assert sim.counters.paid_twice == 0
    assert sim.counters.billed_requests == 60  # every billed result was used
    # sent again: only the cancelled requests fal removed from its queue (never run, unbilled)
    assert sim.counters.accepted_submits == 60 + cancelled - used


async def test_deadline_resubmits_a_request_that_fal_aborted(runner):
    """§11 row 1, the other way: an app that honours cancellation ends the request unbilled;
    only then is the item sent again."""
    sim = await runner.start(
        capacity=20,
        latency="fixed:0.05",
        cancel_mode="abort",
        faults=_rules(FaultRule(kind="straggler", route="submit", factor=20, max=2)),
    )
    summary = await runner.run(runner.spec(runner.manifest(10), concurrency=20, deadline=0.3))
    assert summary.exit_code == ExitCode.OK and summary.counts["completed"] == 10
    assert summary.stats["cancelled"] == 2 and summary.stats["completed_after_cancel"] == 0
    assert sim.counters.accepted_submits == 12 and sim.counters.billed_requests == 10
    assert sim.counters.paid_twice == 0
