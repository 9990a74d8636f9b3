"""The command line: real `firered-batch` processes, their exit codes and what they print."""

import json

import pytest
from click.testing import CliRunner
from support import TEST_KEY, item_rows, png_uri, run_cli, write_csv

from batch.cli import main
from batch.sim import Simulator

ALL_COMMANDS = ["run", "validate", "status", "export", "report", "retry", "doctor", "sim"]


@pytest.fixture
async def sim():
    async with Simulator(key=TEST_KEY, latency="fixed:0.01", capacity=4) as running:
        yield running


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for command in ALL_COMMANDS:
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0, command
        assert "Example: firered-batch" in result.output, command


async def test_run_exit_0_then_status_and_export(sim, tmp_path):
    manifest = tmp_path / "m.csv"
    write_csv(manifest, item_rows(3))
    out = tmp_path / "out"
    code, stdout, stderr = await run_cli(
        "run", str(manifest), "--queue-url", sim.url, "--output", str(out)
    )
    assert code == 0, stderr
    assert "3 completed" in stdout and str(out / "images") in stdout
    assert TEST_KEY not in stdout + stderr
    code, stdout, _ = await run_cli("status", str(manifest), "--output", str(out), "--json")
    assert code == 0 and json.loads(stdout)["counts"]["completed"] == 3
    (out / "results.csv").unlink()
    code, stdout, _ = await run_cli("export", str(manifest), "--output", str(out))
    assert code == 0 and (out / "results.csv").exists()


async def test_invalid_manifest_exit_2_lists_every_bad_row_and_sends_nothing(sim, tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(
        "id,prompt,image_urls,seed,output_format\n"
        f'a,ok,"{png_uri()}",1,png\n'
        f'b,,"{png_uri()}",2,png\n'
        f'c,x,"{png_uri()}",three,png\n'
        f'd,x,"{png_uri()}",4,gif\n',
        encoding="utf-8",
    )
    code, _, stderr = await run_cli("run", str(manifest), "--queue-url", sim.url, cwd=tmp_path)
    assert code == 2
    assert stderr.splitlines() == [
        "bad.csv:3: prompt: Field required",
        "bad.csv:4: seed: Input should be a valid integer, unable to parse string as an integer",
        "bad.csv:5: output_format: Input should be 'jpeg' or 'png'",
    ]
    assert sim.counters.snapshot()["requests"] == {}
    code, _, _ = await run_cli("validate", str(manifest), cwd=tmp_path)
    assert code == 2


async def test_unknown_job_key_exit_2(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("manifest: m.csv\nconcurency: 3\n", encoding="utf-8")
    write_csv(tmp_path / "m.csv", item_rows(1))
    code, _, stderr = await run_cli("run", str(job), cwd=tmp_path)
    assert code == 2
    assert "job.yaml:2: concurency: unknown field" in stderr


async def test_failed_items_exit_1(sim, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"prompt": "p", "image_urls": ["data:image/png;base64,AAAA"]}) + "\n",
        encoding="utf-8",
    )
    code, stdout, _ = await run_cli(
        "run", str(manifest), "--queue-url", sim.url, "--output", str(tmp_path / "o")
    )
    assert code == 1 and "1 failed" in stdout


async def test_wrong_key_exit_3(sim, tmp_path):
    manifest = tmp_path / "m.csv"
    write_csv(manifest, item_rows(2))
    code, stdout, stderr = await run_cli(
        "run",
        str(manifest),
        "--queue-url",
        sim.url,
        "--output",
        str(tmp_path / "o"),
        key="nope-123",
    )
    assert code == 3 and "refused by fal" in stdout
    assert "nope-123" not in stdout + stderr


async def test_validate_prints_counts(tmp_path):
    manifest = tmp_path / "m.csv"
    write_csv(manifest, item_rows(4, image_size="square", num_images=2))
    code, stdout, _ = await run_cli("validate", str(manifest), cwd=tmp_path)
    assert code == 0
    assert stdout.strip() == "m.csv: 4 items, 4 input images → 8 output images, 2.1 MP"


def _local_run(tmp_path, *extra: str, rows: int = 3):
    manifest = tmp_path / "m.csv"
    if not manifest.exists():
        write_csv(manifest, item_rows(rows))
    args = ["run", str(manifest), "--queue-url", "local", "--output", str(tmp_path / "out")]
    return CliRunner().invoke(main, [*args, *extra], env={"FAL_KEY": TEST_KEY})


def test_status_export_report_and_doctor_take_an_output_folder(tmp_path):
    assert _local_run(tmp_path).exit_code == 0
    out = tmp_path / "out"
    cli = CliRunner()

    status = cli.invoke(main, ["status", str(out), "--json"])
    assert status.exit_code == 0, status.output
    shown = json.loads(status.stdout)
    assert shown["counts"]["completed"] == 3 and shown["job"] == "m"
    (out / "results.csv").unlink()
    export = cli.invoke(main, ["export", str(out)])
    assert export.exit_code == 0 and (out / "results.csv").is_file()
    (out / "report.html").unlink()
    report = cli.invoke(main, ["report", str(out)])
    assert report.exit_code == 0 and (out / "report.html").is_file()
    doctor = cli.invoke(main, ["doctor", str(out)])
    assert doctor.exit_code == 0 and doctor.stdout.strip().endswith("healthy"), doctor.output
    both = cli.invoke(main, ["status", str(out), "--output", str(out)])
    assert both.exit_code == 2 and "is an output folder already" in both.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = cli.invoke(main, ["status", str(empty)])
    assert none.exit_code == 2 and "no ledger yet" in none.stderr


def test_doctor_exits_2_and_says_what_to_do(tmp_path):
    assert _local_run(tmp_path).exit_code == 0
    out = tmp_path / "out"
    next((out / "images").iterdir()).unlink()
    result = CliRunner().invoke(main, ["doctor", str(tmp_path / "m.csv"), "--output", str(out)])
    assert result.exit_code == 2
    assert "PROBLEM  outputs: 1 of 3 files do not match the ledger: missing: 1" in result.stdout
    assert "what to do:" in result.stdout and result.stdout.strip().endswith("1 problem")


def test_start_over_moves_the_earlier_outputs_aside_and_runs_again(tmp_path):
    assert _local_run(tmp_path).exit_code == 0
    out = tmp_path / "out"
    (out / "ledger.sqlite").unlink()
    before = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())

    refused = _local_run(tmp_path)
    assert refused.exit_code == 2 and "--start-over" in refused.stderr
    dry = _local_run(tmp_path, "--start-over", "--dry-run")
    assert dry.exit_code == 2 and "not with --dry-run" in dry.stderr
    again = _local_run(tmp_path, "--start-over")

    assert again.exit_code == 0, again.output
    (aside,) = tmp_path.glob("out.set-aside-*")
    assert f"are now in {aside}" in again.stderr
    assert sorted(p.relative_to(aside) for p in aside.rglob("*") if p.is_file()) == [
        p for p in before if p.name != ".lock"
    ]
    assert "3 completed" in again.stdout and (out / "ledger.sqlite").stat().st_size > 0
