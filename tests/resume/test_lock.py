"""One run per output folder: a concurrent run is refused at once (exit 5); a lock left by a
killed run never blocks the next one."""

from __future__ import annotations

import signal


async def test_second_concurrent_run_exits_5_at_once_and_sends_nothing(harness):
    h = harness
    h.write_manifest(h.items(8))
    first = await h.start()
    assert await h.wait_until(lambda: h.counts()["submitted"] >= 1, first)
    # Freeze the first run while it holds the lock, so the overlap is certain.
    first.send_signal(signal.SIGSTOP)
    try:
        second = await h.run()
    finally:
        first.send_signal(signal.SIGCONT)

    assert second.code == 5, second.err
    assert f"another run (pid {first.pid}) is working on this output folder" in second.err
    assert str(h.out) in second.err
    assert second.out == ""

    done = await h.finish(first)
    assert done.code == 0, done.err
    h.check_all_done()
    # The refused run never touched the ledger: one run recorded, nothing submitted twice.
    assert h.run_count() == 1


async def test_lock_left_by_a_killed_run_does_not_block(harness):
    h = harness
    h.write_manifest(h.items(8))
    proc = await h.start()
    assert await h.wait_until(lambda: h.counts()["submitted"] >= 1, proc)
    proc.kill()
    killed = await h.finish(proc)
    assert killed.code == -signal.SIGKILL
    # The lock file is still there, naming the dead holder.
    assert (h.out / ".lock").read_text().split() == [str(proc.pid)]

    done = await h.run()

    assert done.code == 0, done.err
    assert "another run" not in done.err
    h.check_all_done()
