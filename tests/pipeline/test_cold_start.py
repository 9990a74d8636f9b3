"""A cold start: many requests submitted before any has finished, so no service time is known.
Only a few scout requests poll closely; the others wait for what the scouts learn. Counted,
never timed."""

from __future__ import annotations

import asyncio

from support import free_port, item_rows, write_csv

from batch.errors import ExitCode
from batch.sim import FaultPlan, FaultRule


async def test_a_cold_start_costs_few_status_requests_per_item(runner):
    n = 60
    sim = await runner.start(capacity=n, latency="fixed:1.5")
    spec = runner.spec(runner.manifest(n), concurrency=n, queue_ahead=0, wait="poll")
    summary = await runner.run(spec)
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["completed"] == n
    per_item = sim.counters.requests_for("status") / n
    # Without scouts every request polls at growing intervals: about 8 each for 1.5 s.
    assert per_item <= 2.5, per_item


async def test_without_service_times_from_fal_the_scouts_own_observation_serves(
    runner, monkeypatch
):
    """No `inference_time` in fal's metrics: the scouts' own observation of how long a
    request ran is learned instead, and the cold start stays cheap."""
    import batch.pipeline.waiting as waiting

    monkeypatch.setattr(waiting, "inference_time", lambda status: None)
    n = 40
    sim = await runner.start(capacity=n, latency="fixed:1.0")
    spec = runner.spec(runner.manifest(n), concurrency=n, queue_ahead=0)
    summary = await runner.run(spec)
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["completed"] == n
    assert sim.counters.requests_for("status") / n <= 2.5


def test_with_no_queue_ahead_polls_start_before_the_likely_end_and_follow_closely():
    from batch.pipeline.waiting import ServiceTimes, eager_poll

    service = ServiceTimes()
    service.estimate, service.spread, service.samples = 2.0, 0.8, 50
    first = eager_poll(service, 0.0)
    assert first < service.estimate  # before the likely end, not after it
    step = eager_poll(service, 2.0)
    assert step <= 0.5 * service.spread + 1e-9  # closely once it may be done
    assert eager_poll(service, 20.0) > step  # a straggler is asked less often


async def test_a_strict_concurrency_run_completes_with_few_polls(runner):
    n = 30
    sim = await runner.start(capacity=5, latency="uniform:0.1,0.3")
    spec = runner.spec(runner.manifest(n), concurrency=5, queue_ahead=0, wait="poll")
    summary = await runner.run(spec)
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["completed"] == n
    assert sim.counters.requests_for("status") / n <= 6


async def test_with_no_queue_ahead_a_polled_request_follows_its_end_on_the_stream(runner):
    """Strict concurrency in poll mode: once a service time is known, each request's last
    stretch is followed on fal's status stream (at most `concurrency` at once), so the end is
    noticed at once for one status request."""
    n = 30
    sim = await runner.start(capacity=5, latency="uniform:0.2,0.4")
    spec = runner.spec(runner.manifest(n), concurrency=5, queue_ahead=0, wait="poll")
    summary = await runner.run(spec)
    assert summary.exit_code == ExitCode.OK, summary.text()
    streams = sim.counters.requests_for("stream")
    assert streams >= n - 10  # all but the cold start's first few
    assert (sim.counters.requests_for("status") + streams) / n <= 2.5


async def test_when_the_stream_is_refused_polls_still_find_every_end(runner):
    n = 20
    refused = FaultPlan(seed=1, rules=[FaultRule(kind="http_error", route="stream", status=503)])
    sim = await runner.start(capacity=5, latency="uniform:0.2,0.4", faults=refused)
    spec = runner.spec(runner.manifest(n), concurrency=5, queue_ahead=0, wait="poll")
    summary = await runner.run(spec)
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["completed"] == n
    assert sim.counters.requests_for("stream") > 0
    assert sim.counters.requests_for("status") > 0


def test_polls_of_a_request_with_nothing_ahead_hand_over_before_its_likely_end():
    from batch.pipeline.waiting import ServiceTimes, tail_start

    service = ServiceTimes()
    service.estimate, service.spread, service.samples = 2.0, 0.4, 50
    assert tail_start(service) == 1.2
    service.spread = 3.0
    assert tail_start(service) == 0.0  # a wide spread: follow it from the start


async def test_when_the_scouts_fail_others_take_their_place_at_once(runner, monkeypatch):
    """The first requests polled closely (the scouts) all fail, so they teach no service time:
    others become scouts at once instead of waiting out MAX_COLD_WAIT (made an hour here: the
    run would hang without the hand-over; the bound below only guards against that)."""
    import batch.pipeline.waiting as waiting

    monkeypatch.setattr(waiting, "MAX_COLD_WAIT", 3600.0)
    broken = [  # first in key order, so sent first: an input fal cannot fetch
        {"id": f"a{i}", "prompt": "x", "image_urls": f"http://127.0.0.1:{free_port()}/x.png"}
        for i in range(3)
    ]
    manifest = runner.tmp / "m.csv"
    write_csv(manifest, broken + item_rows(9))
    sim = await runner.start(capacity=12, latency="fixed:0.2")
    spec = runner.spec(manifest, concurrency=12, wait="poll")
    summary = await asyncio.wait_for(runner.run(spec), timeout=120)
    assert summary.counts == {"pending": 0, "submitted": 0, "completed": 9, "failed": 3}
    assert sim.counters.requests_for("status") / 12 <= 4
