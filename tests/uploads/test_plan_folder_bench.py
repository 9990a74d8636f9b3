"""benchmarks/plan_folder.py runs end to end at a tiny size: each file read exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_plan_folder_benchmark_reads_each_file_once(tmp_path: Path):
    out = tmp_path / "figures.json"
    script = ROOT / "benchmarks" / "plan_folder.py"
    command = [sys.executable, str(script), "20", "--size", "16", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["items"] == 60
    assert (figures["plan_reads"], figures["plan_max_reads"]) == (20, 1)
    assert figures["replan_reads"] == 0
    assert "peak RSS" in done.stdout
