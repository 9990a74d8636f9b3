"""`retry` puts failed items back for the next run (all, or one error kind) without paying twice
for a request that succeeded; `schedule` prints a crontab line and systemd units."""

from __future__ import annotations

import json

from click.testing import CliRunner

from batch.cli import main
from batch.sim import FaultPlan

# item000's request fails at fal (422, permanent); item001's images cannot be downloaded (its
# five download attempts meet five 500s). Concurrency 1 and a long service time keep the
# faults on those two items.
FAULTS = FaultPlan.model_validate(
    {
        "seed": 3,
        "rules": [
            {"kind": "job_error", "transient": False, "max": 1},
            {"kind": "http_error", "route": "files", "status": 500, "max": 5},
        ],
    }
)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _job(h) -> None:
    h.target = h.tmp / "job.yaml"
    h.target.write_text(
        "manifest: m.csv\nretries: {attempts: 3, backoff_min: 0.01, backoff_max: 0.02}\n",
        encoding="utf-8",
    )


async def test_retry_by_kind_then_all(make_harness):
    h = await make_harness(faults=FAULTS, latency="fixed:0.3")
    h.write_manifest(h.items(4))
    _job(h)

    first = await h.run("--concurrency", "1")

    assert first.code == 1, first.err
    code, out = _cli("status", str(h.target), "--output", str(h.out), "--json")
    status = json.loads(out)
    assert code == 0 and status["counts"]["failed"] == 2
    assert {f["kind"]: f["example_key"] for f in status["failures"]} == {
        "permanent": "item000",
        "download": "item001",
    }
    paid = h.row("item001")
    assert paid.request_id and h.submits(paid) == 1

    code, out = _cli("retry", str(h.target), "--output", str(h.out), "--kind", "download")

    assert code == 0 and "1 failed (download) items will be tried again" in out
    # fal's request succeeded: the item goes back to `submitted` with its request id.
    again = h.row("item001")
    assert again.state == "submitted" and again.request_id == paid.request_id
    assert h.row("item000").state == "failed"

    second = await h.run("--concurrency", "1")

    assert second.code == 1, second.err
    assert h.row("item001").state == "completed"
    assert h.submits(h.row("item001")) == 1  # re-attached, not paid for again
    assert h.row("item000").state == "failed"

    code, out = _cli("retry", str(h.target), "--output", str(h.out))

    assert code == 0 and "1 failed items will be tried again" in out
    assert h.row("item000").state == "pending"

    third = await h.run("--concurrency", "1")

    assert third.code == 0, third.err
    # item000's first request failed at fal, so a second one is expected; nothing else repeats.
    h.check_all_done(submits={"item000": 2})
    code, out = _cli("retry", str(h.target), "--output", str(h.out))
    assert code == 0 and out.startswith("0 failed items")


def test_schedule_prints_crontab_and_systemd_units(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text("id,prompt,image_urls\n", encoding="utf-8")
    job = tmp_path / "nightly.yaml"
    job.write_text("manifest: m.csv\n", encoding="utf-8")

    code, out = _cli("schedule", str(job), "--every", "30m")

    assert code == 0, out
    cron = [line for line in out.splitlines() if line.startswith("*/30 * * * * ")]
    assert len(cron) == 1
    assert f"cd {tmp_path} && " in cron[0]
    assert f"run {job} --max-runtime 27m" in cron[0]
    for text in (
        "[Service]",
        "Type=oneshot",
        f"WorkingDirectory={tmp_path}",
        "SuccessExitStatus=4 5",
        "[Timer]",
        "OnUnitActiveSec=1800s",
        "Persistent=true",
        "WantedBy=timers.target",
    ):
        assert text in out, text

    code, out = _cli("schedule", str(job), "--every", "2h")
    assert code == 0 and "0 */2 * * * " in out and "--max-runtime 108m" in out

    code, out = _cli("schedule", str(job), "--every", "90s")
    assert code == 2 and "whole minutes" in out
