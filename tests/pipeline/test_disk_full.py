"""A disk that fills up during a run: the run stops admitting, keeps every request fal holds
`submitted` (never abandoned, never paid again), exits 4 with one line; once there is room the
same command finishes with nothing paid twice."""

import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from support import write_csv

from batch.errors import ExitCode
from batch.ledger import Ledger


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_stops_the_run_and_the_next_run_finishes_without_paying_twice(
    runner, small_disk
):
    sim = await runner.start(capacity=4)
    out = small_disk / "out"
    noise = Image.frombytes("RGB", (600, 600), os.urandom(600 * 600 * 3))
    noise.save(runner.tmp / "noise.png")  # outputs take its size: about 1 MB of PNG each
    rows = [
        {"id": f"item{i:03d}", "prompt": f"edit {i}", "image_urls": "noise.png"} for i in range(6)
    ]
    write_csv(runner.tmp / "m.csv", rows)
    spec = runner.spec(runner.tmp / "m.csv", output=out, concurrency=4)

    summary = await runner.run(spec)

    assert summary.exit_code == ExitCode.STOPPED
    assert "disk full" in summary.message and "run the same command again" in summary.message
    assert summary.counts["completed"] < 6 and summary.counts["failed"] == 0
    assert sim.counters.paid_twice == 0

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = await runner.run(spec)

    assert again.exit_code == ExitCode.OK and again.counts["completed"] == 6
    assert sim.counters.paid_twice == 0
    with Ledger.open(out) as ledger:
        assert ledger.possible_duplicates() == 0
