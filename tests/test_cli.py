"""The command line: real `firered-batch` processes, their exit codes and what they print."""

import asyncio
import json
import os
import sys

import pytest
from click.testing import CliRunner
from support import TEST_KEY, item_rows, png_uri, write_csv

from batch.cli import main
from batch.sim import Simulator

ALL_COMMANDS = ["run", "validate", "status", "export", "sim"]


async def _cli(*args: str, key: str = TEST_KEY, cwd=None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env["FAL_KEY"] = key
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "batch",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


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
    code, stdout, stderr = await _cli(
        "run", str(manifest), "--queue-url", sim.url, "--output", str(out)
    )
    assert code == 0, stderr
    assert "3 completed" in stdout and str(out / "images") in stdout
    assert TEST_KEY not in stdout + stderr
    code, stdout, _ = await _cli("status", str(manifest), "--output", str(out), "--json")
    assert code == 0 and json.loads(stdout)["counts"]["completed"] == 3
    (out / "results.csv").unlink()
    code, stdout, _ = await _cli("export", str(manifest), "--output", str(out))
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
    code, _, stderr = await _cli("run", str(manifest), "--queue-url", sim.url, cwd=tmp_path)
    assert code == 2
    assert stderr.splitlines() == [
        "bad.csv:3: prompt: Field required",
        "bad.csv:4: seed: Input should be a valid integer, unable to parse string as an integer",
        "bad.csv:5: output_format: Input should be 'jpeg' or 'png'",
    ]
    assert sim.counters.snapshot()["requests"] == {}
    code, _, _ = await _cli("validate", str(manifest), cwd=tmp_path)
    assert code == 2


async def test_unknown_job_key_exit_2(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("manifest: m.csv\nconcurency: 3\n", encoding="utf-8")
    write_csv(tmp_path / "m.csv", item_rows(1))
    code, _, stderr = await _cli("run", str(job), cwd=tmp_path)
    assert code == 2
    assert "job.yaml:2: concurency: unknown field" in stderr


async def test_failed_items_exit_1(sim, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"prompt": "p", "image_urls": ["data:image/png;base64,AAAA"]}) + "\n",
        encoding="utf-8",
    )
    code, stdout, _ = await _cli(
        "run", str(manifest), "--queue-url", sim.url, "--output", str(tmp_path / "o")
    )
    assert code == 1 and "1 failed" in stdout


async def test_wrong_key_exit_3(sim, tmp_path):
    manifest = tmp_path / "m.csv"
    write_csv(manifest, item_rows(2))
    code, stdout, stderr = await _cli(
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
    code, stdout, _ = await _cli("validate", str(manifest), cwd=tmp_path)
    assert code == 0
    assert stdout.strip() == "m.csv: 4 items, 4 input images → 8 output images, 2.1 MP"
