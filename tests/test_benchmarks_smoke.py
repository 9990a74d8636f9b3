"""The benchmark scripts run end to end at a tiny size and write their figures (never timed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
N = 20
SCRIPT_TIMEOUT_S = 50


def run_script(name: str, out: Path, *extra: str) -> dict[str, Any]:
    command = [sys.executable, str(BENCHMARKS / name), str(N), "--json", str(out), *extra]
    # Its own process group, so a hung script is killed together with its simulator.
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{stdout}\n{stderr}"
    figures: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return figures


def assert_positive(figures: dict[str, Any], keys: list[str]) -> None:
    missing = [k for k in keys if k not in figures]
    assert not missing, f"missing keys: {missing}"
    bad = {
        k: figures[k] for k in keys if not (isinstance(figures[k], int | float) and figures[k] > 0)
    }
    assert not bad, f"not positive numbers: {bad}"


@pytest.mark.timeout(60)
def test_sim_rate_reports_submit_and_status_rates(tmp_path: Path) -> None:
    """sim_rate.py exits 0 and writes positive submit and status rates for N requests each."""
    figures = run_script("sim_rate.py", tmp_path / "sim_rate.json", "--workers", "8")
    assert_positive(
        figures,
        ["submit_per_s", "submit_wall_s", "status_per_s", "status_wall_s", "sim_peak_rss_mib"],
    )
    assert figures["submit_n"] == figures["sim_submits_seen"] == N
    assert figures["status_n"] == figures["sim_status_seen"] == N


@pytest.mark.timeout(60)
def test_throughput_reports_floor_pipeline_and_ratio(tmp_path: Path) -> None:
    """throughput.py exits 0 with a completed run and writes both phases' figures and the ratio."""
    figures = run_script("throughput.py", tmp_path / "throughput.json", "--concurrency", "10")
    assert_positive(
        figures,
        [
            "floor_wall_s",
            "floor_items_per_s",
            "floor_status_per_item",
            "pipeline_wall_s",
            "pipeline_items_per_s",
            "pipeline_status_per_item",
            "ratio",
            "client_peak_rss_mib",
        ],
    )
    assert figures["exit_code"] == 0
    assert figures["n"] == N


@pytest.mark.timeout(60)
def test_webhook_vs_poll_reports_makespan_and_status_requests_per_mode(tmp_path: Path) -> None:
    """webhook_vs_poll.py exits 0 with every mode's run completed and writes their figures."""
    figures = run_script(
        "webhook_vs_poll.py",
        tmp_path / "webhook_vs_poll.json",
        "--concurrency",
        "10",
        "--latency",
        "fixed:0.02",
    )
    assert_positive(figures, ["poll_makespan_s", "poll_status_per_item", "webhook_makespan_s"])
    modes = {m["mode"]: m for m in figures["modes"]}
    assert set(modes) == {"poll", "stream", "webhook", "webhook, 20% lost"}
    assert all(m["completed"] == N and m["exit_code"] == 0 for m in modes.values())
    assert modes["webhook"]["webhooks_delivered"] == N


@pytest.mark.timeout(120)
def test_makespan_compares_our_modes_with_both_baselines(tmp_path: Path) -> None:
    """makespan.py runs every mode and baseline and reports efficiency and status per item."""
    figures = run_script("makespan.py", tmp_path / "makespan.json")
    runs = figures["runs"]
    assert {"ours: poll", "ours: stream", "baseline: poll 0.1 s", "baseline: poll 1 s"} <= set(runs)
    for name, run in runs.items():
        assert_positive(run, ["efficiency", "makespan_s", "oracle_s", "requests_per_item"])
        assert run["completed"] == N, name


@pytest.mark.timeout(60)
def test_defaults_reports_the_efficiency_of_a_run_with_default_settings(tmp_path: Path) -> None:
    """defaults.py runs a job that sets only the queue and the concurrency."""
    figures = run_script("defaults.py", tmp_path / "defaults.json")
    assert_positive(figures, ["efficiency", "makespan_s", "oracle_s"])
    assert figures["completed"] == N and figures["exit_code"] == 0


@pytest.mark.timeout(90)
def test_live_fal_reports_money_under_a_deadline_and_a_locked_account(tmp_path: Path) -> None:
    """live_fal.py reports both scenarios; nothing is paid twice and the lock exits 6."""
    figures = run_script("live_fal.py", tmp_path / "live_fal.json")
    cut, lock = figures["deadline"], figures["locked"]
    assert cut["completed"] == N and cut["paid_twice"] == 0 and cut["exit_code"] == 0
    assert lock["exit_code"] == 6 and lock["failed"] == 0
    assert lock["completed"] + lock["pending"] == 60


@pytest.mark.timeout(60)
def test_kills_reports_completed_and_verified_files_after_kills(tmp_path: Path) -> None:
    """kills.py kills runs and resumes; every item ends completed and its files verified."""
    figures = run_script(
        "kills.py", tmp_path / "kills.json", "--kills", "2", "--history-wait", "3s"
    )
    assert figures["completed"] == N and figures["file_problems"] == 0
    assert figures["files_verified"] == N and figures["final_exit_code"] == 0
    assert figures["paid_twice"] == 0


@pytest.mark.timeout(60)
def test_lost_answers_reports_recoveries_and_nothing_paid_twice(tmp_path: Path) -> None:
    """lost_answers.py drops submit answers after accept; each is found in the history."""
    figures = run_script("lost_answers.py", tmp_path / "lost.json")
    assert figures["completed"] == N and figures["exit_code"] == 0
    assert figures["paid_twice"] == 0 and figures["accepted_submits_per_item"] == 1.0
    assert figures["recovered"] == figures["answers_dropped"]
    assert figures["sent_again"] == 0


@pytest.mark.timeout(60)
def test_storm_reports_429_share_and_ideal_ratio(tmp_path: Path) -> None:
    """storm.py completes every item against a 10/s server and reports the 429 share."""
    figures = run_script("storm.py", tmp_path / "storm.json")
    assert_positive(figures, ["ideal_s", "submit_span_s", "ideal_ratio", "submits"])
    assert figures["submits"] >= N
    assert 0 <= figures["rejected_share"] < 1


@pytest.mark.timeout(60)
def test_big_manifest_reports_every_phase_with_all_items(tmp_path: Path) -> None:
    """big_manifest.py validates and plans N rows in each phase and reports time and memory."""
    figures = run_script("big_manifest.py", tmp_path / "big_manifest.json")
    for phase in ("validate", "plan", "dry_run", "dry_run_again"):
        assert_positive(figures, [f"{phase}_s", f"{phase}_us_per_row", f"{phase}_peak_rss_mib"])
        assert figures[f"{phase}_items"] == N, phase


@pytest.mark.timeout(60)
def test_resume_of_a_finished_job_makes_no_api_call(tmp_path: Path) -> None:
    """resume.py: the unchanged resume makes 0 API calls; the appended row is sent."""
    figures = run_script("resume.py", tmp_path / "resume.json")
    assert_positive(figures, ["unchanged_wall_s", "appended_wall_s", "run_peak_rss_mib"])
    assert figures["unchanged_api_calls"] == 0
    assert figures["appended_api_calls"] > 0
    assert figures["unchanged_exit_code"] == figures["appended_exit_code"] == 0


@pytest.mark.timeout(60)
def test_imaging_reports_ms_per_render_for_every_size_and_format(tmp_path: Path) -> None:
    """imaging.py exits 0 and writes a positive ms per render for each size and format."""
    figures = run_script("imaging.py", tmp_path / "imaging.json")
    cases = {(c["size"], c["format"]): c for c in figures["cases"]}
    sizes = ["64x64", "512x384", "1024x1024"]
    assert set(cases) == {(size, fmt) for size in sizes for fmt in ("png", "jpeg")}
    for case in cases.values():
        assert_positive(case, ["ms_per_render", "renders_per_s", "output_kib"])
        assert case["cpu_ms_per_render"] >= 0
        assert case["n"] == N
    assert_positive(figures, ["png_64x64_ms_per_render"])


@pytest.mark.timeout(90)
def test_cold_start_compares_our_modes_with_both_baselines(tmp_path: Path) -> None:
    """cold_start.py submits every item at once in each row and reports its figures."""
    figures = run_script("cold_start.py", tmp_path / "cold_start.json", "--service", "0.5")
    runs = figures["runs"]
    assert set(runs) == {"ours: poll", "ours: stream", "baseline: poll 1 s", "baseline: poll 0.1 s"}
    for name, run in runs.items():
        assert_positive(
            run,
            ["over_oracle", "makespan_s", "oracle_s", "status_per_item", "client_cpu_ms_per_item"],
        )
        assert run["submit_span_s"] >= 0, name
        assert run["completed"] == N, name
        assert 1 <= run["submitted_before_first_done"] <= N, name


@pytest.mark.timeout(90)
def test_strict_concurrency_compares_our_modes_with_both_baselines(tmp_path: Path) -> None:
    """strict_concurrency.py runs with queue_ahead 0 and reports efficiency and refill gaps."""
    figures = run_script(
        "strict_concurrency.py",
        tmp_path / "strict.json",
        "--capacity",
        "5",
        "--latency",
        "lognormal:0.1,0.5",
    )
    runs = figures["runs"]
    assert set(runs) == {"ours: poll", "ours: stream", "baseline: poll 1 s", "baseline: poll 0.1 s"}
    for name, run in runs.items():
        assert_positive(run, ["efficiency", "makespan_s", "oracle_s", "status_per_item"])
        assert isinstance(run["refill_gap_median_ms"], float), name
        assert isinstance(run["refill_gap_p90_ms"], float), name
        assert run["refill_gaps"] == N - 5, name
        assert run["completed"] == N, name
        assert 1 <= run["peak_at_server"] <= N, name
