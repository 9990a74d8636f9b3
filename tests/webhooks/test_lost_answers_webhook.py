"""Lost submit answers with webhooks: a request found in fal's request history is re-attached
in `wait: webhook` runs, and its delivery is accepted by `webhook serve` after `run --detach`."""

from __future__ import annotations

import asyncio
from typing import Any

from support import TEST_KEY

from batch.errors import ExitCode
from batch.fal import Credentials
from batch.pipeline.webhook_serve import serve_webhooks
from batch.sim import FaultRule

WAIT_S = 10.0  # bound on waiting for a condition; never reached when things work


async def until(condition: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_webhook_run_recovers_lost_answers(hooks):
    sim = await hooks.start(
        faults=hooks.plan(FaultRule(kind="drop_after", route="submit", rate=0.5, max=3))
    )
    n = 10
    summary = await hooks.run(hooks.spec(hooks.manifest(n)))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.recovered == 3 and summary.possible_duplicates == 0
    assert sim.counters.accepted_submits == n and sim.counters.paid_twice == 0


async def test_detach_recovers_then_serve_accepts_the_recovered_requests_webhooks(hooks):
    sim = await hooks.start(
        faults=hooks.plan(FaultRule(kind="drop_after", route="submit", rate=0.5, max=2))
    )
    n = 8
    spec = hooks.spec(hooks.manifest(n))
    summary = await hooks.run(spec, detach=True)
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.recovered == 2 and summary.counts["submitted"] == n
    # Nobody listened while the run was detached: every delivery waits for a retry.
    await until(lambda: all(r.completed_at is not None for r in sim.jobs))

    served = await serve_webhooks(
        spec, until_done=True, credentials=Credentials(TEST_KEY), policy=hooks.policy
    )
    assert served.completed == n and served.counts["completed"] == n
    assert served.receiver["accepted"] >= n  # the recovered requests' deliveries too
    assert sim.counters.accepted_submits == n and sim.counters.paid_twice == 0
