"""kill -9 at any instant loses nothing: crashpoints and seeded random-time SIGKILLs, then resume.

After every kill the ledger is consistent and no partial image has a final name; resuming (the
same command again) completes every item without submitting an accepted request again: a
submit fal accepted whose answer died with the process is found in fal's request history and
re-attached (`recovered`).
"""

from __future__ import annotations

import asyncio
import csv
import random
import signal

import pytest

from batch.sim.jobs import COMPLETED

N_ITEMS = 20


def _accepted_but_unknown(h) -> list[str]:
    """Items whose request fal accepted while the ledger still has them pending."""
    return [r.key for r in h.all_rows() if r.state == "pending" and h.submits(r) > 0]


@pytest.mark.parametrize("point", ["submit", "download", "ledger"])
async def test_kill_at_a_crashpoint_then_resume(harness, point):
    h = harness
    h.write_manifest(h.items(N_ITEMS))
    nth = random.Random(f"crash-{point}").randint(3, 12)

    killed = await h.run(crash=f"{point}:{nth}")

    assert killed.code == -signal.SIGKILL, killed.err
    h.check_consistent()
    counts = h.counts()
    assert counts["completed"] < N_ITEMS
    unknown = _accepted_but_unknown(h)
    if point == "submit":
        # fal accepted the nth submit; the process died before the ledger learned its id.
        assert unknown, "the killed submit should be accepted and unrecorded"
    temps = h.temp_files()
    if point == "download":
        assert temps, "the half-written download should be a temporary file"
    if point == "ledger":
        # The completing transaction was rolled back: an item is still `submitted` although
        # its file is already on disk under its final name.
        names = [p.name for p in h.image_files()]
        stuck = [
            r.key
            for r in h.all_rows()
            if r.state == "submitted" and any(name.startswith(r.key) for name in names)
        ]
        assert stuck
    submitted = [r for r in h.all_rows() if r.state == "submitted"]
    before = {r.key: h.submits(r) for r in submitted}

    results = await h.resume_until_done()

    rows = {r.key: r for r in h.check_all_done()}
    if temps:
        assert f"removed {len(temps)} temporary files" in results[0].err
    # Submitted items were re-attached, never submitted again.
    assert {key: h.submits(rows[key]) for key in before} == before
    assert all(n == 1 for n in before.values())
    # The accepted-but-unrecorded submits were found in fal's history, not sent again.
    assert all(rows[key].recovered for key in unknown)
    assert all(h.submits(rows[key]) == 1 for key in unknown)
    assert not any(r.possible_duplicate for r in rows.values())
    recovered = sum(r.recovered for r in rows.values())
    if point == "submit":
        assert recovered >= 1
        assert f"{recovered} submits whose answer was lost were found" in results[-1].out
        with open(h.out / "results.csv", newline="", encoding="utf-8") as fh:
            marked = [row["key"] for row in csv.DictReader(fh) if row["recovered"] == "true"]
        assert sorted(marked) == sorted(unknown)


async def test_a_kill_before_the_submit_left_is_sent_again_once_the_history_says_so(harness):
    """Killed after the intent was recorded and before the submit left: fal never saw it, the
    history cannot show it, so after the bound (2 s here) it is sent — once — and flagged."""
    h = harness
    h.write_manifest(h.items(8))
    killed = await h.run(crash="intent:3")
    assert killed.code == -signal.SIGKILL, killed.err
    unsent = [r for r in h.all_rows() if r.submit_started_at is not None]
    assert unsent and all(h.submits(r) == 0 for r in unsent)
    history_before = h.sim.counters.requests_for("history")

    await h.resume_until_done()

    rows = {r.key: r for r in h.check_all_done()}
    assert h.sim.counters.requests_for("history") > history_before  # it was looked for
    for row in unsent:
        assert rows[row.key].possible_duplicate and not rows[row.key].recovered
        assert h.submits(rows[row.key]) == 1  # flagged, but paid once
    assert h.sim.counters.paid_twice == 0


async def test_sigkill_at_random_moments_then_resume(harness):
    h = harness
    h.write_manifest(h.items(N_ITEMS))
    rng = random.Random(1)
    kills = 0
    for _ in range(3):
        talked = h.sim_requests()
        proc = await h.start()
        # Kill at a random moment once the run is talking to fal: submitting, waiting,
        # downloading or writing the ledger, whichever it happens to be doing.
        if await h.wait_until(lambda t=talked: h.sim_requests() > t, proc):
            await asyncio.sleep(rng.uniform(0.0, 0.8))
        if proc.returncode is None:
            proc.kill()
        result = await h.finish(proc)
        if result.code == 0:
            break
        assert result.code == -signal.SIGKILL, result.err
        kills += 1
        h.check_consistent()
    assert kills >= 1

    await h.resume_until_done()

    h.check_all_done()


async def test_resume_resubmits_only_what_fal_no_longer_knows(slow_harness):
    h = slow_harness
    h.write_manifest(h.items(6))
    proc = await h.start()
    # All four slots hold a request (capacity 3 runs three, one waits): kill -9 now.
    assert await h.wait_until(lambda: h.counts()["submitted"] >= 4, proc)
    proc.kill()
    assert (await h.finish(proc)).code == -signal.SIGKILL
    h.check_consistent()
    live = [r for r in h.all_rows() if r.state == "submitted"]
    assert len(live) >= 2
    jobs = [h.sim.model.get(r.request_id) for r in live]
    assert all(job is not None for job in jobs)
    await h.wait_until(lambda: all(job.state == COMPLETED for job in jobs))
    # fal forgets two of them (retention passed): those answer 404 from now on.
    lost = live[:2]
    for job in jobs[:2]:
        h.sim.model.forget(job)

    await h.resume_until_done()

    rows = {r.key: r for r in h.check_all_done(submits={r.key: 2 for r in lost})}
    for row in lost:
        assert rows[row.key].request_id != row.request_id
        assert not rows[row.key].possible_duplicate  # fal said no: not ambiguous
    for row in live[2:]:
        assert rows[row.key].request_id == row.request_id  # re-attached
        assert h.submits(rows[row.key]) == 1
