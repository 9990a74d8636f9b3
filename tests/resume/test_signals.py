"""Ctrl-C once drains and exits 4; twice stops at once with in-flight items left `submitted`;
--max-runtime drains at its deadline. Every way out is resumable with the same command."""

from __future__ import annotations

import asyncio
import json
import signal

RESUME_HINT = "run the same command again to resume"


async def test_sigint_once_drains_exits_4_and_resumes_without_duplicates(harness):
    h = harness
    h.write_manifest(h.items(20))
    proc = await h.start()
    assert await h.wait_until(lambda: h.counts()["submitted"] >= 1, proc)

    proc.send_signal(signal.SIGINT)
    stopped = await h.finish(proc)

    assert stopped.code == 4, stopped.err
    assert "stopped early (interrupted)" in stopped.out and RESUME_HINT in stopped.out
    counts = h.counts()
    # Drained: whatever was in flight finished; nothing is left half-way, the rest waits.
    assert counts["submitted"] == 0 and counts["failed"] == 0
    assert counts["pending"] > 0
    h.check_consistent()

    done = await h.run()

    assert done.code == 0, done.err
    rows = h.check_all_done()
    assert h.sim.counters.duplicate_submits() == {}
    assert not any(r.possible_duplicate for r in rows)


async def test_sigint_twice_stops_at_once_and_resume_reattaches(slow_harness):
    h = slow_harness
    h.write_manifest(h.items(8))
    proc = await h.start()
    # concurrency 4 against capacity 3: one request is still queued behind three that run
    # for at least 0.4 s each, so a first Ctrl-C cannot finish draining before the second.
    assert await h.wait_until(lambda: h.counts()["submitted"] >= 4, proc)

    proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.1)  # two separate deliveries, not one coalesced signal
    proc.send_signal(signal.SIGINT)
    stopped = await h.finish(proc)

    assert stopped.code == 4, stopped.err
    assert RESUME_HINT in stopped.out
    h.check_consistent()
    left = [r for r in h.all_rows() if r.state == "submitted"]
    assert left, "in-flight items stay submitted for the next run to re-attach"
    assert all(h.submits(r) == 1 for r in left)
    ids = {r.key: r.request_id for r in left}

    done = await h.run()

    assert done.code == 0, done.err
    rows = {r.key: r for r in h.check_all_done()}
    # Re-attached: the same request ids, no new submit for any of them.
    assert {key: rows[key].request_id for key in ids} == ids
    assert all(h.submits(rows[key]) == 1 for key in ids)
    assert h.sim.counters.duplicate_submits() == {}


async def test_max_runtime_drains_exits_4_with_plain_json_logs(harness):
    h = harness
    h.write_manifest(h.items(20))

    stopped = await h.run("--max-runtime", "0.3s", "--log-format", "json")

    assert stopped.code == 4, stopped.err
    assert "stopped early (max runtime reached)" in stopped.out and RESUME_HINT in stopped.out
    counts = h.counts()
    assert counts["submitted"] == 0 and counts["pending"] > 0
    # Not a terminal: no progress bar; every log line is one JSON object.
    assert "\r" not in stopped.out + stopped.err
    events = [json.loads(line) for line in stopped.err.splitlines()]
    assert any(e.get("event") == "progress" for e in events)

    done = await h.run("--max-runtime", "50m")

    assert done.code == 0, done.err
    assert "progress: " in done.err and "\r" not in done.out + done.err
    h.check_all_done()
    assert h.sim.counters.duplicate_submits() == {}
