"""A full disk (a small tmpfs): the ledger and the downloads say "disk full", the run exits 4,
no partial file has a final name, nothing already done is lost, and the same command finishes
once there is room, without paying for anything twice."""

from __future__ import annotations

import asyncio
import base64
import io
import sqlite3

import aiohttp
import pytest
from PIL import Image
from support import PlanItem, leftovers

from batch.errors import ExitCode
from batch.ledger import Ledger
from batch.ledger.group import GroupCommit
from batch.outputs import DiskFullError, download_image
from batch.outputs.naming import OutputRecord, verify_outputs


def _noise_png(side: int) -> bytes:
    """A PNG that does not compress: `side`² × 3 bytes, give or take."""
    import os

    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


async def test_a_download_to_a_full_disk_leaves_no_file_and_says_disk_full(tmp_path, disks) -> None:
    disk = disks.mount(tmp_path / "disk", "256k")
    data = _noise_png(220)  # ~145 KB: the second does not fit
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    async with aiohttp.ClientSession() as session:
        first = await download_image(session, uri, disk / "images" / "a.png")
        with pytest.raises(DiskFullError) as caught:
            await download_image(session, uri, disk / "images" / "b.png")
    assert caught.value.exit_code == ExitCode.STOPPED == 4
    message = str(caught.value)
    assert message.startswith(f"{disk / 'images'}: disk full (no space left on device)")
    assert "free some space, then run the same command again" in message
    assert [p.name for p in (disk / "images").iterdir()] == ["a.png"]  # no .tmp-, no b.png
    assert first.path.read_bytes() == data


async def test_ledger_writes_on_a_full_disk_say_disk_full_and_lose_nothing(tmp_path, disks) -> None:
    disk = disks.mount(tmp_path / "disk", "1m")
    with Ledger.open(disk / "out") as ledger:
        ledger.plan([PlanItem(f"k{i}", {"prompt": "p" * 50, "i": i}) for i in range(20)])
        ledger.mark_submitted("k0", "r0", None, None, None)
        filler = disks.fill(disk)
        writes = GroupCommit(ledger, window=0)
        many = [
            writes.write(
                lambda i=i: ledger.mark_submitted(f"k{i}", f"r{i}-{'x' * 4000}", None, None, None)
            )
            for i in range(1, 20)
        ]
        results = await asyncio.gather(*many, return_exceptions=True)
        assert any(isinstance(r, DiskFullError) for r in results), results
        assert not any(isinstance(r, sqlite3.Error) for r in results)  # named, not raw
        with pytest.raises(DiskFullError, match="free some space"):
            ledger.plan([PlanItem(f"n{i}", {"prompt": "q" * 500}) for i in range(200)])
        filler.unlink()  # room again: the same ledger works on, what it had is kept
        assert ledger.get("k0") is not None and ledger.get("k0").request_id == "r0"  # type: ignore[union-attr]
        ledger.mark_failed("k0", "permanent", "no")
        assert ledger.counts()["failed"] == 1


def test_a_run_on_a_full_disk_exits_4_and_changes_nothing(host, disks) -> None:
    disks.mount(host.out, "2m")
    host.first_run()
    host.add_rows(20)  # new rows the ledger must record before anything is sent
    disks.fill(host.out)
    before, sent = host.snapshot(), host.sim.sent()
    del before["filler"]

    result = host.cli("run")

    assert result.exit_code == ExitCode.STOPPED == 4, result.output
    assert "Traceback" not in result.output
    line = host.one_line(result)
    assert f"{host.out}: disk full" in line and "free some space" in line
    after = host.snapshot()
    del after["filler"]
    ledger_files = {k for k in after.keys() | before.keys() if k.startswith("ledger.sqlite")}
    assert {k: v for k, v in after.items() if k not in ledger_files} == {
        k: v for k, v in before.items() if k not in ledger_files
    }
    assert host.sim.sent()["accepted"] == sent["accepted"]  # nothing new was sent


def test_downloads_that_fill_the_disk_stop_the_run_and_the_same_command_finishes(
    host, disks
) -> None:
    """images/ on a disk too small for them: the run stops (exit 4) with what it downloaded
    whole and recorded, no temporary file, requests at fal kept `submitted`; with room again
    the same command collects the rest without sending anything twice."""
    host.add_rows(37)  # 40 items
    images = disks.mount(host.out / "images", "64k")  # 16 pages: not 40 files
    sent = host.sim.sent()["accepted"]

    stopped = host.cli("run")

    assert stopped.exit_code == ExitCode.STOPPED, stopped.output
    assert "Traceback" not in stopped.output
    assert f"{images}: disk full" in stopped.output and "free some space" in stopped.output
    assert leftovers(host.out) == []
    with Ledger.open(host.out) as ledger:
        counts = ledger.counts()
        records = [r for row in ledger.iter_work() for r in ledger.outputs(row.key)]
        done = [OutputRecord(**vars(r)) for key in _completed(ledger) for r in ledger.outputs(key)]
    assert counts["failed"] == 0 and 0 < counts["completed"] < 40, counts
    assert records == []  # unfinished items own no files
    assert verify_outputs(host.out, done) == []  # every recorded file is whole

    disks.resize(images, "8m")
    again = host.cli("run")

    assert again.exit_code == ExitCode.OK, again.output
    with Ledger.open(host.out) as ledger:
        assert ledger.counts()["completed"] == 40
        assert ledger.possible_duplicates() == 0
    assert host.sim.sent()["accepted"] - sent == 40  # each item paid for once
    assert host.sim.sim.counters.duplicate_submits() == {}


def _completed(ledger: Ledger) -> list[str]:
    with sqlite3.connect(ledger.path) as conn:
        return [k for (k,) in conn.execute("SELECT key FROM items WHERE state = 'completed'")]
