"""`firered-batch status`: counts, failures by kind, the latest run (live: rate and ETA), JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from batch.cli import main
from batch.ledger import Ledger
from batch.report.status import job_status


class _Item:
    def __init__(self, key: str) -> None:
        self.key = key
        self.endpoint = "fal-ai/firered-image-edit"
        self.payload = {"prompt": key, "image_urls": ["https://example.com/a.png"]}
        self.source = f"m.jsonl:{key}"


def _status(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["status", *args])
    return result.exit_code, result.output


async def test_status_after_a_run_groups_failures_with_an_example(make_runner, rows):
    runner = await make_runner()
    runner.write(rows(ok=3, flagged=0, broken=2))
    assert (await runner.run()).exit_code == 1
    target = (str(runner.manifest), "--output", str(runner.out))

    code, text = _status(*target)

    assert code == 0, text
    lines = text.splitlines()
    assert lines[0] == f"m: 5 items ({runner.out})"  # the name: the manifest's stem
    assert lines[1:5] == [
        "  completed         3   60.0%",
        "  failed            2   40.0%",
        "  submitted         0    0.0%",
        "  pending           0    0.0%",
    ]
    assert lines[5] == "failures by kind:"
    assert lines[6].startswith("  permanent      2  e.g. bad0: ") and "422" in lines[6]
    assert lines[7].startswith("run 1: ") and ", exit 1, 5 items done, " in lines[7]

    code, text = _status(*target, "--json")

    assert code == 0, text
    data = json.loads(text)
    assert data["job"] == "m" and data["total"] == 5
    assert data["counts"] == {"pending": 0, "submitted": 0, "completed": 3, "failed": 2}
    [group] = data["failures"]
    assert (group["kind"], group["count"], group["example_key"]) == ("permanent", 2, "bad0")
    assert "422" in group["example_message"]
    run = data["run"]
    assert (run["id"], run["state"], run["exit_code"], run["done"]) == (1, "finished", 1, 5)
    assert run["eta_seconds"] is None and run["remaining"] == 0
    assert data["spent_usd"] > 0  # the simulator at the queue URL states the price too


def _live_ledger(out: Path, clock: list[float]) -> None:
    """A run that started at t=1000 and finished 3 of 10 items by t=1030, still going."""
    with Ledger.open(out, clock=lambda: clock[0]) as ledger:
        ledger.plan([_Item(f"k{i}") for i in range(10)])
        ledger.start_run({"concurrency": 4})
        for i in range(3):
            clock[0] += 10
            ledger.mark_submitted(f"k{i}", f"r{i}", None, None, None)
            ledger.mark_completed(f"k{i}", [], seed=1, timings={}, nsfw=[])
        ledger.mark_submitted("k3", "r3", None, None, None)


def test_a_live_run_shows_its_rate_and_eta(tmp_path):
    out = tmp_path / "out"
    clock = [1000.0]
    _live_ledger(out, clock)
    (out / ".lock").write_text(f"{os.getpid()}\n")  # a living process holds the folder

    with Ledger.open(out) as ledger:
        status = job_status(ledger, name="live", now=1030.0)

    assert status.run is not None and status.run.live
    assert (status.run.done, status.run.remaining) == (3, 7)
    assert status.run.items_per_second == 0.1 and status.run.eta == 70.0
    assert (
        status.text()
        .splitlines()[-1]
        .endswith("(30 s), 3 items done, 0.10 items/s, 7 to go, ETA 1m 10s")
    )
    assert status.as_dict()["run"]["state"] == "live"
    assert status.as_dict()["run"]["eta_seconds"] == 70.0


def test_an_unfinished_run_whose_process_is_gone_is_interrupted(tmp_path):
    out = tmp_path / "out"
    _live_ledger(out, [1000.0])  # no lock file: nobody holds the folder

    code, text = _status(str(tmp_path / "m.csv"), "--output", str(out), "--json")
    assert code == 2  # the manifest argument must exist
    (tmp_path / "m.csv").write_text("prompt,image_urls\nx,https://example.com/a.png\n")
    code, text = _status(str(tmp_path / "m.csv"), "--output", str(out), "--json")

    assert code == 0, text
    run = json.loads(text)["run"]
    assert (run["state"], run["eta_seconds"], run["remaining"]) == ("interrupted", None, 7)
    code, text = _status(str(tmp_path / "m.csv"), "--output", str(out))
    assert "interrupted (no end recorded)" in text


async def test_status_shows_the_spend_with_a_price(make_runner, rows, tmp_path):
    runner = await make_runner()
    runner.write(rows(ok=2, flagged=0, broken=0))
    await runner.run()
    job = tmp_path / "job.yaml"
    job.write_text(f"manifest: m.csv\noutput: {runner.out}\nprice: {{per_image: 0.25}}\n")

    code, text = _status(str(job))

    assert code == 0, text
    assert text.splitlines()[-1] == "spent: $0.50 (estimate at $0.25/image)"
    assert json.loads(_status(str(job), "--json")[1])["spent_usd"] == 0.5
