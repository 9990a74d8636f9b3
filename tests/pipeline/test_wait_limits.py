"""Waiting has limits and never pays twice: a request fal gives no answer about is left
`submitted` for a later run; the requests of an earlier run's embedded simulator, which died
with it, are sent again (they cost nothing)."""

from support import TEST_KEY

from batch.errors import ExitCode
from batch.job import JobSpec
from batch.ledger import Ledger
from batch.pipeline.run import run_job
from batch.sim import FaultPlan, FaultRule


async def test_a_request_fal_never_answers_about_is_left_submitted_not_resent(runner):
    sim = await runner.start(
        faults=FaultPlan(seed=1, rules=[FaultRule(kind="http_error", route="status", status=503)])
    )
    summary = await runner.run(runner.spec(runner.manifest(2)))
    assert summary.exit_code == ExitCode.STOPPED
    assert summary.counts["submitted"] == 2 and summary.stats["left"] == 2
    assert summary.stats["wait_failures"] == 2 * 8
    assert sim.counters.accepted_submits == 2  # never sent again
    assert "2 items left as they were" in summary.text()
    assert TEST_KEY not in summary.text()


async def test_requests_of_a_dead_embedded_simulator_are_sent_again(tmp_path, runner):
    """After a double Ctrl-C of a `queue: local` run, its submitted items point at a
    simulator that is gone: the next run sends them again at once instead of waiting forever."""
    manifest = runner.manifest(3)
    spec = JobSpec.for_manifest(manifest, queue="local", output=tmp_path / "out")
    with Ledger.open(tmp_path / "out"):
        pass  # a ledger to plan into: a dry run on a new folder creates nothing
    assert (await run_job(spec, dry_run=True)).counts["pending"] == 3
    with Ledger.open(tmp_path / "out") as ledger:
        for i in range(2):
            dead = f"http://127.0.0.1:9/fal-ai/firered-image-edit/requests/r{i}"
            ledger.mark_submitting(f"item00{i}")
            ledger.mark_submitted(f"item00{i}", f"r{i}", f"{dead}/status", dead, f"{dead}/cancel")
    summary = await run_job(spec)
    assert summary.exit_code == ExitCode.OK and summary.counts["completed"] == 3
    assert summary.stats["wait_failures"] == 0 and summary.stats["submits"] == 3
