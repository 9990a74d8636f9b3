"""How many downloads run at once: enough to keep up with the results, and bounded."""

import pytest

import batch.pipeline.finish as finish_module
from batch.errors import ExitCode
from batch.pipeline.finish import MAX_DOWNLOADS, MIN_DOWNLOADS, download_limit
from batch.sim import FaultPlan, FaultRule


def test_download_limit_is_half_the_slots_within_its_floor_and_ceiling():
    assert download_limit(2) == MIN_DOWNLOADS == 16
    assert download_limit(40) == 20
    assert download_limit(200) == 100
    assert download_limit(1000) == MAX_DOWNLOADS == 128


@pytest.mark.parametrize("concurrency", [8, 40])
async def test_downloads_fill_their_limit_and_never_pass_it(runner, monkeypatch, concurrency):
    """Every image download is slow, every job instant: results pile up, and the run downloads
    exactly `download_limit` of them at once."""
    running = peak = 0
    real = finish_module.download_image

    async def counted(*args, **kwargs):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await real(*args, **kwargs)
        finally:
            running -= 1

    monkeypatch.setattr(finish_module, "download_image", counted)
    await runner.start(
        capacity=concurrency,
        latency="fixed:0",
        faults=FaultPlan(seed=3, rules=[FaultRule(kind="slow", route="files", delay=0.5)]),
    )
    n = 3 * download_limit(concurrency)
    summary = await runner.run(runner.spec(runner.manifest(n), concurrency=concurrency))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["completed"] == n
    assert peak == download_limit(concurrency)
    assert running == 0
