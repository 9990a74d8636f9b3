"""Detached runs: `run --detach` submits with webhooks and exits; `webhook serve` finalizes items
as deliveries arrive (after downtime, thanks to the retry schedule); a later `run` re-attaches
by polling what is left; serve and a run racing on one ledger finalize each item once."""

from __future__ import annotations

import asyncio
from typing import Any

from click.testing import CliRunner
from support import TEST_KEY, run_cli

from batch.cli import main
from batch.errors import ExitCode
from batch.fal import Credentials
from batch.ledger import Ledger
from batch.pipeline.webhook_serve import serve_webhooks
from batch.sim import FaultRule, Simulator

WAIT_S = 10.0  # bound on waiting for a condition; never reached when things work


async def until(condition: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.005)


def all_jobs_done(sim: Simulator) -> bool:
    return all(r.completed_at is not None for r in sim.jobs)


async def test_detach_then_serve_collects_everything_after_receiver_downtime(hooks):
    sim = await hooks.start()
    n = 12
    spec = hooks.spec(hooks.manifest(n))
    summary = await hooks.run(spec, detach=True)
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["submitted"] == n and "detached" in summary.message
    counters = sim.counters
    assert counters.requests_for("status") == counters.requests_for("result") == 0
    # Nobody listens yet: every delivery fails and waits for its next retry.
    await until(lambda: counters.webhooks["failed_attempts"] >= n and all_jobs_done(sim))
    assert counters.webhooks["delivered"] == 0

    served = await serve_webhooks(
        spec, until_done=True, credentials=Credentials(TEST_KEY), policy=hooks.policy
    )
    assert served.completed == n and served.counts["completed"] == n
    assert served.receiver["accepted"] >= n
    assert counters.requests_for("status") == 0  # collected without a single poll
    assert counters.requests_for("files") == n
    assert counters.duplicate_submits() == {}
    assert (hooks.tmp / "out" / "results.csv").read_text().count(",completed,") == n

    again = await hooks.run(spec.with_overrides(wait="poll"))
    assert again.exit_code == ExitCode.OK and again.stats["submits"] == 0


async def test_lost_webhooks_of_a_detached_run_are_collected_by_the_next_run(hooks):
    sim = await hooks.start(faults=hooks.plan(FaultRule(kind="webhook_lost", rate=0.3)))
    n = 20
    spec = hooks.spec(hooks.manifest(n))
    assert (await hooks.run(spec, detach=True)).exit_code == ExitCode.OK
    service = await hooks.service(spec)  # deliveries that failed meanwhile are retried
    await until(lambda: all_jobs_done(sim))
    await sim.webhooks.idle()
    await service.collector.drain()
    lost = set(sim.counters.webhooks_lost)
    assert lost and service.ledger.counts()["submitted"] == len(lost)
    assert service.ctx.stats.completed == n - len(lost)

    summary = await hooks.run(spec.with_overrides(wait="poll"))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["completed"] == n and summary.stats["submits"] == 0
    polled = {r.request_id for r in sim.jobs if sim.counters.status_calls_for(r.request_id)}
    assert polled == lost
    assert sim.counters.duplicate_submits() == {}


async def test_serve_and_a_reattaching_run_racing_finalize_each_item_once(hooks):
    sim = await hooks.start(latency="fixed:0.02")
    n = 30
    spec = hooks.spec(hooks.manifest(n))
    assert (await hooks.run(spec, detach=True)).exit_code == ExitCode.OK
    await until(lambda: all_jobs_done(sim) and sim.counters.webhooks["failed_attempts"] >= n)
    # Now both at once: the receiver comes up (deliveries are retried) while a run polls.
    run = asyncio.ensure_future(hooks.run(spec.with_overrides(wait="poll")))
    service = await hooks.service(spec)
    summary = await run
    await sim.webhooks.idle()
    await service.collector.drain()
    assert summary.exit_code == ExitCode.OK, summary.text()
    with Ledger.open(hooks.tmp / "out") as ledger:
        assert ledger.counts()["completed"] == n
        assert all(len(ledger.outputs(f"item{i:03d}")) == 1 for i in range(n))
    assert summary.stats["completed"] + service.ctx.stats.completed == n  # once each
    assert service.collector.stats["errors"] == 0
    assert sim.counters.duplicate_submits() == {}


async def test_a_reattached_item_finished_elsewhere_meanwhile_is_not_downloaded(hooks):
    """A request sent with a webhook may be finalized by `webhook serve` while a run that
    re-attached to it fetches its result: the run then leaves it, and downloads nothing."""
    sim = await hooks.start(faults=hooks.plan(FaultRule(kind="slow", route="result", delay=3.0)))
    n = 3
    spec = hooks.spec(hooks.manifest(n))
    assert (await hooks.run(spec, detach=True)).exit_code == ExitCode.OK
    await until(lambda: all_jobs_done(sim))
    run = asyncio.ensure_future(hooks.run(spec.with_overrides(wait="poll")))
    await until(lambda: sim.counters.requests_for("result") == n)  # each held for 3 s
    with Ledger.open(hooks.tmp / "out") as elsewhere:  # as `webhook serve` would, first
        for i in range(n):
            elsewhere.mark_completed(f"item{i:03d}", [], seed=1, timings=None, nsfw=None)
    summary = await run
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["completed"] == n and summary.stats["completed"] == 0
    assert sim.counters.requests_for("files") == 0


def test_cli_refuses_detach_without_a_remote_queue_or_a_public_url(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("prompt,image_urls\nsnow,https://example.com/a.png\n")
    runner = CliRunner()
    local = runner.invoke(main, ["run", str(manifest), "--queue-url", "local", "--detach"])
    assert local.exit_code == ExitCode.INVALID and "--detach" in local.output
    remote = ["run", str(manifest), "--queue-url", "http://127.0.0.1:9", "--detach"]
    no_url = runner.invoke(main, remote)
    assert no_url.exit_code == ExitCode.INVALID and "webhook.public_url" in no_url.output
    webhook = ["run", str(manifest), "--queue-url", "http://127.0.0.1:9", "--wait", "webhook"]
    unreachable = runner.invoke(main, webhook)
    assert unreachable.exit_code == ExitCode.INVALID
    assert "webhook.public_url" in unreachable.output and "webhook.listen" in unreachable.output
    serve = runner.invoke(main, ["webhook", "serve", str(manifest)])
    assert serve.exit_code == ExitCode.INVALID and "no ledger yet" in serve.output
    helped = runner.invoke(main, ["webhook", "serve", "--help"])
    assert helped.exit_code == 0 and "Example: firered-batch" in helped.output
    assert "--webhook-url" in runner.invoke(main, ["run", "--help"]).output


async def test_cli_detach_then_webhook_serve_until_done(hooks):
    sim = await hooks.start()
    manifest = hooks.manifest(5)
    out = hooks.tmp / "out"
    hook = [
        "--webhook-url",
        f"http://127.0.0.1:{hooks.port}/fal",
        "--webhook-listen",
        str(hooks.port),
        "--jwks-url",
        sim.jwks_url,
    ]
    common = [str(manifest), "--queue-url", sim.url, "--output", str(out)]
    code, stdout, stderr = await run_cli("run", *common, "--detach", *hook)
    assert code == ExitCode.OK, stdout + stderr
    assert "detached: 5 requests at fal" in stdout
    code, stdout, stderr = await run_cli(
        "webhook", "serve", str(manifest), "--output", str(out), "--until-done", *hook
    )
    assert code == ExitCode.OK, stdout + stderr
    assert "5 completed" in stdout
    with Ledger.open(out) as ledger:
        assert ledger.counts()["completed"] == 5
    assert sim.counters.requests_for("status") == 0
