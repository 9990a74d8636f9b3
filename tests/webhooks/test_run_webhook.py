"""`wait: webhook` runs: results come by webhook, outputs are downloaded and checked like polled
ones, a lost webhook is caught by the safety-net poll, and whatever arrives — duplicates,
reordered or late deliveries racing a poll — each item is finalized exactly once."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from support import TEST_KEY, item_rows, write_csv

from batch.errors import ExitCode
from batch.job import JobError, JobSpec
from batch.ledger import Ledger
from batch.pipeline.run import run_job
from batch.sim import FaultRule


def check_finalized_once(hooks, n: int, images_per_item: int = 1) -> None:
    """Every item completed with its files on disk as recorded, each submitted and each image
    downloaded exactly once (simulator counters and ledger)."""
    sim = hooks.sim
    out = hooks.tmp / "out"
    with Ledger.open(out) as ledger:
        assert ledger.counts()["completed"] == n
        for i in range(n):
            row = ledger.get(f"item{i:03d}")
            assert row is not None and row.state == "completed"
            assert sim.counters.submits_for(row.endpoint, row.payload) == 1
            outputs = ledger.outputs(row.key)
            assert [o.index for o in outputs] == list(range(images_per_item))
            for o in outputs:
                data = (out / o.path).read_bytes()
                assert hashlib.sha256(data).hexdigest() == o.sha256 and len(data) == o.bytes
    assert sim.counters.requests_for("files") == n * images_per_item
    assert sim.counters.duplicate_submits() == {}


async def test_results_come_by_webhook_without_status_or_result_requests(hooks):
    sim = await hooks.start()
    spec = hooks.spec(hooks.manifest(12, num_images=2))
    summary = await hooks.run(spec)
    assert summary.exit_code == ExitCode.OK, summary.text()
    check_finalized_once(hooks, 12, images_per_item=2)
    assert sim.counters.requests_for("status") == 0 == summary.stats["status_requests"]
    assert sim.counters.requests_for("result") == 0  # outputs taken from the payload
    assert summary.stats["webhooks"]["received"] == 12
    assert summary.stats["webhooks"]["accepted"] >= 12
    jobs = [sim.model.get(r.request_id) for r in sim.jobs]
    assert {job.webhook for job in jobs if job is not None} == {spec.webhook.public_url}
    assert set(sim.counters.webhooks_delivered) == {r.request_id for r in sim.jobs}


async def test_twenty_percent_lost_webhooks_complete_through_the_safety_net(hooks):
    sim = await hooks.start(faults=hooks.plan(FaultRule(kind="webhook_lost", rate=0.2)))
    n = 30
    summary = await hooks.run(hooks.spec(hooks.manifest(n), safety_net=0.05))
    assert summary.exit_code == ExitCode.OK, summary.text()
    check_finalized_once(hooks, n)
    lost = sim.counters.webhooks_lost
    assert len(lost) >= 2
    assert all(sim.counters.status_calls_for(rid) >= 1 for rid in lost)  # found by polling
    assert summary.stats["webhooks"]["safety_net"] >= len(lost)


async def test_duplicated_reordered_delayed_and_badly_signed_deliveries_change_nothing(hooks):
    sim = await hooks.start(
        faults=hooks.plan(
            FaultRule(kind="webhook_duplicate", rate=0.5),
            FaultRule(kind="webhook_reorder", rate=0.3, delay=0.05),
            FaultRule(kind="webhook_delay", rate=0.3, delay=0.02),
            FaultRule(kind="webhook_bad_signature", rate=0.2),
        )
    )
    n = 24
    summary = await hooks.run(hooks.spec(hooks.manifest(n)))
    assert summary.exit_code == ExitCode.OK, summary.text()
    check_finalized_once(hooks, n)
    counts = sim.counters
    assert counts.webhooks["duplicates_sent"] >= 2 and counts.webhooks["bad_signatures"] >= 1
    assert counts.faults_injected("webhook_reorder", "webhook") >= 1
    webhooks = summary.stats["webhooks"]
    assert webhooks["rejected:bad_signature"] == counts.webhook_responses[401] >= 1
    assert webhooks["received"] == n
    assert webhooks["ignored"] >= 1  # duplicates acknowledged and dropped


async def test_webhook_and_poll_racing_finalize_each_item_once(hooks):
    """The first 8 webhooks are held back 0.5 s, so the safety-net poll finds those results
    first and the webhooks arrive while their items are being or have been finalized; the
    others race their polls as it happens."""
    sim = await hooks.start(
        capacity=4,
        latency="fixed:0.1",
        faults=hooks.plan(FaultRule(kind="webhook_delay", max=8, delay=0.5)),
    )
    n = 40
    summary = await hooks.run(hooks.spec(hooks.manifest(n), safety_net=0.01, concurrency=4))
    assert summary.exit_code == ExitCode.OK, summary.text()
    check_finalized_once(hooks, n)
    assert summary.stats["completed"] == n
    counters = sim.counters
    raced = [
        r.request_id
        for r in sim.jobs
        if counters.status_calls_for(r.request_id) and counters.webhooks_delivered[r.request_id]
    ]
    assert raced, "no item was both polled and sent its webhook"
    webhooks = summary.stats["webhooks"]
    assert webhooks["safety_net"] >= 8 and webhooks["ignored"] >= 1


async def test_payload_error_results_are_fetched_from_the_queue(hooks):
    sim = await hooks.start(
        faults=hooks.plan(FaultRule(kind="webhook_payload_error", rate=0.5)),
    )
    n = 12
    summary = await hooks.run(hooks.spec(hooks.manifest(n)))
    assert summary.exit_code == ExitCode.OK, summary.text()
    check_finalized_once(hooks, n)
    assert sim.counters.webhooks["payload_errors"] >= 1
    assert sim.counters.requests_for("result") == sim.counters.webhooks["payload_errors"]


async def test_error_webhooks_retry_transient_failures_and_fail_permanent_ones(hooks):
    sim = await hooks.start(
        capacity=1,  # jobs run in submit order, so the permanent fault hits the 4th submit
        faults=hooks.plan(
            FaultRule(kind="job_error", transient=False, skip=3, max=1),  # a 422 for the 4th
            FaultRule(kind="job_error", transient=True, rate=0.3),  # runner failures (503)
        ),
    )
    summary = await hooks.run(hooks.spec(hooks.manifest(10), concurrency=1))
    assert summary.exit_code == ExitCode.FAILED, summary.text()
    with Ledger.open(hooks.tmp / "out") as ledger:
        assert ledger.counts()["completed"] == 9
        (failure,) = ledger.failures()
        assert failure.kind == "permanent" and "422" in failure.example_message
    assert sum(1 for job in sim.jobs if job.error_type == "runner_disconnected") >= 1
    assert summary.stats["retried"] >= 1
    # failures came by webhook too; each ERROR delivery was confirmed by one status request
    assert sim.counters.requests_for("status") == sim.counters.faults_injected("job_error")


async def test_local_queue_delivers_to_the_embedded_receiver(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FAL_KEY", TEST_KEY)  # never sent: the embedded simulator gets its own
    manifest = tmp_path / "m.csv"
    write_csv(manifest, item_rows(6))
    spec = JobSpec.for_manifest(
        manifest,
        queue="local",
        wait="webhook",
        output=tmp_path / "out",
        sim={"latency": "fixed:0.01", "capacity": 4},
    )
    summary = await run_job(spec)
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["completed"] == 6
    assert summary.stats["status_requests"] == 0
    assert summary.stats["webhooks"]["received"] == 6


async def test_a_taken_listen_port_is_a_settings_error_before_anything_is_sent(hooks):
    sim = await hooks.start()
    with socket.socket() as taken:
        # a port another test closed a moment ago may be in TIME_WAIT; a listener still wins
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", hooks.port))
        taken.listen()
        with pytest.raises(JobError, match=r"webhook\.listen"):
            await hooks.run(hooks.spec(hooks.manifest(3)))
    assert sim.counters.accepted_submits == 0
