"""What a cron job's log shows: a start line, one line per failed item, progress with rate and
ETA, and a final summary — one JSON object per line with `--log-format json`, plain lines
otherwise, never a repr. A real `firered-batch run` process against a simulator in the test."""

from __future__ import annotations

import json
from pathlib import Path

from support import TEST_KEY, png_uri, run_cli, write_csv

from batch.sim import Simulator

BROKEN_IMAGE = "data:image/png;base64,AAAAAAAA"  # the simulator cannot load it: a 422


async def _run(tmp: Path, sim: Simulator, *extra: str) -> tuple[int, str, str]:
    rows = [{"id": f"ok{i}", "prompt": f"edit {i}", "image_urls": [png_uri()]} for i in range(3)]
    rows += [{"id": f"bad{i}", "prompt": "sharpen", "image_urls": [BROKEN_IMAGE]} for i in range(2)]
    manifest = tmp / "nightly.csv"
    write_csv(manifest, rows)
    return await run_cli(
        *("run", str(manifest), "--queue-url", sim.url, "--output", str(tmp / "out"), *extra)
    )


async def test_json_logs_are_one_object_per_line_with_start_failures_progress_summary(
    tmp_path: Path,
) -> None:
    async with Simulator(key=TEST_KEY, latency="fixed:0.01") as sim:
        code, out, err = await _run(tmp_path, sim, "--log-format", "json")
        url = sim.url
    assert code == 1, err
    lines = [json.loads(line) for line in (err + out).splitlines() if line.strip()]
    events = [line.get("event") for line in lines]
    start = next(line for line in lines if line.get("event") == "start")
    assert (start["job"], start["to_do"], start["total"]) == ("nightly", 5, 5)
    assert start["endpoint"] == "fal-ai/firered-image-edit" and start["queue"] == url
    failed = [line for line in lines if line.get("event") == "item_failed"]
    assert sorted(f["key"] for f in failed) == ["bad0", "bad1"]
    assert all(f["kind"] == "permanent" and f["error"] and f["level"] == "warning" for f in failed)
    progress = [line for line in lines if line.get("event") == "progress"]
    assert progress and progress[-1]["job"] == "nightly"
    assert {"items_per_second", "eta_seconds", "completed", "failed"} <= set(progress[-1])
    [summary] = [line for line in lines if line.get("event") == "summary"]
    assert events[-1] == "summary" and out.strip() == json.dumps(summary, ensure_ascii=False)
    assert summary["exit_code"] == 1 and summary["counts"]["completed"] == 3
    assert summary["this_run"]["failed_by_kind"] == {"permanent": 2}
    assert TEST_KEY not in err + out and "Stats(" not in err + out


async def test_plain_logs_name_the_job_each_failure_and_end_with_the_summary(
    tmp_path: Path,
) -> None:
    async with Simulator(key=TEST_KEY, latency="fixed:0.01") as sim:
        code, out, err = await _run(tmp_path, sim)
        url = sim.url
    assert code == 1, err
    assert "INFO start nightly: 5 of 5 items to do (manifest " in err
    assert f"queue {url}, concurrency " in err
    for key in ("bad0", "bad1"):
        assert f"WARNING item {key} failed (permanent): " in err
    assert "INFO progress: nightly: 5/5 done: 3 completed, 2 failed" in err
    assert "items/s" in err
    assert out.startswith("run nightly: ") and "3 completed, 2 failed" in out
    assert not any(line.lstrip().startswith("{") for line in err.splitlines())
    assert TEST_KEY not in err + out and "Stats(" not in err + out


async def test_a_dry_run_on_a_new_folder_creates_nothing(tmp_path: Path) -> None:
    async with Simulator(key=TEST_KEY, latency="fixed:0.01") as sim:
        code, out, err = await _run(tmp_path, sim, "--dry-run")
    assert code == 0, err
    assert not (tmp_path / "out").exists()
    assert "dry run: nothing sent" in out
    assert "ledger:" not in out and "images:" not in out  # no path that does not exist


def test_an_ending_error_is_a_json_line_too(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from batch.cli import main

    manifest = tmp_path / "bad.csv"
    manifest.write_text("id,prompt,image_urls\na,,https://x.test/a.png\n")
    result = CliRunner().invoke(
        main, ["run", str(manifest), "--queue-url", "local", "--log-format", "json"]
    )
    assert result.exit_code == 2
    [line] = [json.loads(x) for x in result.stderr.splitlines() if x.strip()]
    assert (line["event"], line["level"], line["exit_code"]) == ("error", "error", 2)
    assert "bad.csv:2: prompt" in line["message"]
