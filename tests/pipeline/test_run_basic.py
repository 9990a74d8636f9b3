"""Whole runs against the simulator: outputs, ledger, exports, modes, resume, formats."""

import csv
import hashlib
import json

from support import png_uri

from batch.errors import ExitCode
from batch.ledger import Ledger


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_run_completes_every_item_with_verified_files(runner):
    sim = await runner.start()
    summary = await runner.run(runner.spec(runner.manifest(12)))
    assert summary.exit_code == ExitCode.OK
    assert summary.counts["completed"] == 12
    out = runner.tmp / "out"
    with Ledger.open(out) as ledger:
        for i in range(12):
            records = ledger.outputs(f"item{i:03d}")
            assert len(records) == 1
            path = out / records[0].path
            assert path.name == f"item{i:03d}_0.png"
            assert _sha(path) == records[0].sha256 and path.stat().st_size == records[0].bytes
    assert sim.counters.accepted_submits == 12
    assert not sim.counters.duplicate_submits()
    rows = list(csv.DictReader((out / "results.csv").read_text(encoding="utf-8").splitlines()))
    assert [r["state"] for r in rows] == ["completed"] * 12
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["state"] == "completed"
    assert not list((out / "images").glob(".tmp-*"))


async def test_second_run_sends_nothing(runner):
    """Resume of a finished job: zero API calls, same files."""
    sim = await runner.start()
    spec = runner.spec(runner.manifest(5))
    assert (await runner.run(spec)).exit_code == ExitCode.OK
    before = sim.counters.snapshot()["requests"]
    again = await runner.run(spec)
    assert again.exit_code == ExitCode.OK and again.stats["submits"] == 0
    assert sim.counters.snapshot()["requests"] == before


async def test_stream_mode_and_multiple_images(runner):
    sim = await runner.start(capacity=2, latency="fixed:0.05", ping_interval_s=0.02)
    spec = runner.spec(runner.manifest(4, num_images=2, output_format="jpeg"), wait="stream")
    summary = await runner.run(spec)
    assert summary.exit_code == ExitCode.OK
    images = sorted(p.name for p in (runner.tmp / "out" / "images").iterdir())
    assert images == sorted(f"item{i:03d}_{k}.jpg" for i in range(4) for k in range(2))
    assert sim.counters.requests_for("stream") == 4
    assert sim.counters.requests_for("status") == 0  # the stream replaced polling


async def test_yaml_and_jsonl_manifests_with_unicode(runner):
    """All formats run; Chinese prompts travel intact to fal and back."""
    await runner.start()
    uri = png_uri()
    yaml_path = runner.tmp / "m.yaml"
    yaml_path.write_text(
        "defaults: {output_format: png}\n"
        "matrix:\n"
        "  prompts: [把天空变成紫色, Add snow]\n"
        f"  images: ['{uri}', ['{uri}', '{uri}']]\n",
        encoding="utf-8",
    )
    jsonl_path = runner.tmp / "m.jsonl"
    jsonl_path.write_text(
        json.dumps({"id": "cn", "prompt": "给猫戴上帽子", "image_urls": [uri]}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    first = await runner.run(runner.spec(yaml_path, output=runner.tmp / "y"))
    assert first.exit_code == ExitCode.OK and first.counts["completed"] == 4
    second = await runner.run(runner.spec(jsonl_path, output=runner.tmp / "j"))
    assert second.exit_code == ExitCode.OK
    rows = list(
        csv.DictReader((runner.tmp / "j" / "results.csv").read_text(encoding="utf-8").splitlines())
    )
    assert rows[0]["prompt"] == "给猫戴上帽子"


async def test_permanent_failure_is_recorded_with_detail(runner):
    """An input fal rejects (422 at the result) fails its item only; exit code 1."""
    await runner.start()
    manifest = runner.tmp / "m.jsonl"
    good = {"id": "good", "prompt": "fine", "image_urls": [png_uri()]}
    bad = {"id": "bad", "prompt": "broken image", "image_urls": ["data:image/png;base64,AAAA"]}
    manifest.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    summary = await runner.run(runner.spec(manifest))
    assert summary.exit_code == ExitCode.FAILED
    assert summary.counts == {"pending": 0, "submitted": 0, "completed": 1, "failed": 1}
    with Ledger.open(runner.tmp / "out") as ledger:
        row = ledger.get("bad")
        assert row is not None and row.state == "failed" and row.error_kind == "permanent"
        assert "422" in (row.error_message or "") and "image_urls" in (row.error_message or "")
        assert row.attempts == 1  # never resubmitted


async def test_dry_run_sends_nothing(runner):
    sim = await runner.start()
    summary = await runner.run(runner.spec(runner.manifest(3)), dry_run=True)
    assert summary.plan["new"] == 3 and summary.exit_code == ExitCode.OK
    assert sim.counters.snapshot()["requests"] == {}


async def test_resume_of_a_finished_job_keeps_its_exports(runner):
    """Nothing changed: results and report are current and not written again; one missing
    file makes the run write them all."""
    await runner.start()
    spec = runner.spec(runner.manifest(4))
    assert (await runner.run(spec)).exit_code == ExitCode.OK
    out = runner.tmp / "out"
    derived = [out / "results.csv", out / "results.jsonl", out / "report.html"]
    before = [path.stat().st_mtime_ns for path in derived]
    assert (await runner.run(spec)).exit_code == ExitCode.OK
    assert [path.stat().st_mtime_ns for path in derived] == before
    (out / "report.html").unlink()
    assert (await runner.run(spec)).exit_code == ExitCode.OK
    assert all(path.exists() for path in derived)
    assert (out / "results.csv").stat().st_mtime_ns > before[0]
