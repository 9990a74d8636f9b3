"""How a command ends: errors raised on purpose keep their exit code; anything else is a crash
(exit 70) with one line naming a log file that holds the traceback, never "invalid input"."""

import os
import subprocess
import sys

from click.testing import CliRunner
from support import TEST_KEY, item_rows, write_csv

import batch.pipeline.finish as finish_module
from batch.cli import main
from batch.errors import ExitCode
from batch.ledger import Ledger


def _run(tmp_path, *extra: str):
    manifest = tmp_path / "m.csv"
    write_csv(manifest, item_rows(3))
    args = ["run", str(manifest), "--queue-url", "local", "--output", str(tmp_path / "out")]
    return CliRunner().invoke(main, [*args, *extra], env={"FAL_KEY": TEST_KEY})


def test_an_unexpected_error_inside_an_item_is_a_crash_with_a_log(tmp_path, monkeypatch):
    async def broken(*args, **kwargs):
        raise ValueError("a bug inside one item's download")

    monkeypatch.setattr(finish_module, "download_image", broken)
    result = _run(tmp_path)

    assert result.exit_code == ExitCode.CRASH == 70, result.output
    lines = result.stderr.strip().splitlines()
    assert "firered-batch crashed: ValueError: a bug inside one item's download" in lines
    assert "Traceback" not in result.stderr
    logs = list((tmp_path / "out").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in result.stderr
    text = logs[0].read_text()
    assert "Traceback" in text and "a bug inside one item's download" in text
    assert TEST_KEY not in text and TEST_KEY not in result.output
    with Ledger.open(tmp_path / "out") as ledger:  # nothing lost: the items wait for a rerun
        assert ledger.counts()["completed"] == 0 and ledger.counts()["failed"] == 0


def test_a_crash_before_the_output_folder_is_known_logs_to_the_temporary_folder(
    tmp_path, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug while loading")

    monkeypatch.setattr("batch.cli.run_command._load_spec", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = _run(tmp_path)
    assert result.exit_code == ExitCode.CRASH, result.output
    logs = list(tmp_path.glob("crash-*.log"))
    assert len(logs) == 1 and "a bug while loading" in logs[0].read_text()


def test_errors_raised_on_purpose_keep_their_exit_codes(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,prompt\nx,\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == ExitCode.INVALID, result.output
    assert "crashed" not in result.stderr and "bad.csv:1: no 'image_urls' column" in result.stderr
    late = _run(tmp_path, "--max-runtime", "soon")
    assert late.exit_code == ExitCode.INVALID
    assert late.stderr.startswith("--max-runtime: not a duration")


def test_importing_the_library_has_no_side_effects():
    """A crash-test setting in the environment arms nothing at import (only the CLI reads
    it), and importing the package leaves the garbage collector's setting alone."""
    code = (
        "import gc; before = gc.get_threshold(); import batch, batch.cli, batch.crashpoints as c;"
        " assert c._plan is None, c._plan; assert gc.get_threshold() == before; print('ok')"
    )
    env = {**os.environ, "FIRERED_BATCH_CRASH": "submit:x"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
