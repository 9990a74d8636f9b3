"""`retry` puts failed items back for the next run (all, or one error kind) without paying twice
for a request that succeeded; `schedule` prints the steps, a crontab line (when cron can keep the
interval) and systemd units."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from batch.cli import main
from batch.cli.schedule import Schedule
from batch.job import parse_duration
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


# --- schedule ---------------------------------------------------------------------------------

CRON_INTERVALS = "1, 2, 3, 4, 5, 6, 10, 12, 15, 20 or 30m; 1, 2, 3, 4, 6, 8 or 12h; or 1d"


def _schedule_job(tmp_path, monkeypatch, *, local: bool = False, name: str = "nightly") -> Path:
    """A job file in `tmp_path` (the current directory), with HOME in `tmp_path/home`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "m.csv").write_text("id,prompt,image_urls\n", encoding="utf-8")
    job = tmp_path / f"{name}.yaml"
    job.write_text("manifest: m.csv\n" + ("queue: local\n" if local else ""), encoding="utf-8")
    return job


def _schedule(job: Path, every: str, *args: str) -> str:
    code, out = _cli("schedule", str(job), "--every", every, *args)
    assert code == 0, out
    return out


def _cron_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.match(r"[0-9*]", line)]


def _max_runtime(out: str) -> str:
    found = set(re.findall(r"--max-runtime ([0-9][0-9dhms]*)", out))
    assert len(found) == 1, found
    return found.pop()


def _cron_command(line: str) -> str:
    r"""What cron hands /bin/sh for a crontab line: the command, `\%` turned into `%`."""
    command = line.split(" ", 5)[5]
    assert re.search(r"(?<!\\)%", command) is None, "an unescaped % ends cron's command"
    return command.replace("\\%", "%")


def _sh(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("every", "cron", "max_runtime", "timer"),
    [
        ("1m", "* * * * *", "30s", "60s"),
        ("5m", "*/5 * * * *", "4m", "300s"),
        ("30m", "*/30 * * * *", "27m", "1800s"),
        ("60m", "0 * * * *", "54m", "3600s"),
        ("2h", "0 */2 * * *", "1h48m", "7200s"),
        ("12h", "0 */12 * * *", "10h48m", "43200s"),
        ("1d", "0 0 * * *", "21h36m", "86400s"),
    ],
)
def test_schedule_prints_an_exact_cron_line_and_the_systemd_units(
    tmp_path, monkeypatch, every, cron, max_runtime, timer
):
    job = _schedule_job(tmp_path, monkeypatch)

    out = _schedule(job, every)

    (line,) = _cron_lines(out)
    assert line.startswith(f"{cron} {{ cd {tmp_path} && ")
    assert _max_runtime(out) == max_runtime
    assert f"run {job} --max-runtime {max_runtime};" in line
    assert line.endswith(f"}} >> {tmp_path}/logs/nightly.log 2>&1")
    assert parse_duration(max_runtime) < parse_duration(every)
    shown = {"60m": "1h"}.get(every, every)
    assert f"--max-runtime {max_runtime}, below the {shown} interval" in out
    assert "No crontab line" not in out
    for text in (
        "[Service]",
        "Type=oneshot",
        f"WorkingDirectory={tmp_path}",
        f"ExecStart=/{_executable(out)} run {job} --max-runtime {max_runtime}\n",
        "SuccessExitStatus=4 5",
        "[Timer]",
        f"OnUnitActiveSec={timer}\n",
        "WantedBy=timers.target",
        "systemctl --user enable --now firered-batch-nightly.timer",
    ):
        assert text in out, text


def _executable(out: str) -> str:
    match = re.search(r"^ExecStart=/(\S+) run ", out, re.M)
    assert match, out
    return match.group(1)


@pytest.mark.parametrize(
    ("every", "why", "max_runtime", "timer"),
    [
        ("7m", "`*/7 * * * *` runs at minutes 0, 7, ..., 56 of each hour, so one gap is only 4m",
         "6m", "420s"),
        ("45m", "`*/45 * * * *` runs at minutes 0 and 45 of each hour, so one gap is only 15m",
         "40m", "2700s"),
        ("5h", "`0 */5 * * *` runs at hours 0, 5, ..., 20 of each day, so one gap is only 4h",
         "4h30m", "18000s"),
        ("90m", "cron has no step of 1h30m", "1h21m", "5400s"),
        ("1h30m", "cron has no step of 1h30m", "1h21m", "5400s"),
        ("90s", "cron counts whole minutes, and 1m30s is not", "45s", "90s"),
        ("2d", "cron has no step of 2d", "1d19h12m", "172800s"),
    ],
)  # fmt: skip
def test_schedule_refuses_a_cron_line_cron_cannot_keep_but_prints_the_timer(
    tmp_path, monkeypatch, every, why, max_runtime, timer
):
    job = _schedule_job(tmp_path, monkeypatch)

    out = _schedule(job, every)

    assert _cron_lines(out) == []
    (refusal,) = [line for line in out.splitlines() if "No crontab line" in line]
    assert refusal.startswith("# 3a. No crontab line: cron cannot run a job every ")
    assert why in refusal
    assert CRON_INTERVALS in refusal
    assert "use the systemd timer below" in refusal
    assert _max_runtime(out) == max_runtime
    assert parse_duration(max_runtime) < parse_duration(every)
    assert f"ExecStart=/{_executable(out)} run {job} --max-runtime {max_runtime}\n" in out
    assert f"OnUnitActiveSec={timer}\n" in out


@pytest.mark.parametrize(
    "seconds", [60, 90, 120, 180, 300, 420, 600, 2700, 3600, 5400, 7200, 18000, 86400, 172800]
)
def test_the_runs_max_runtime_is_always_below_the_interval(seconds):
    plan = Schedule(
        job=Path("/j.yaml"),
        every=seconds,
        workdir=Path("/w"),
        log=Path("/w/l.log"),
        env_file=None,
        launcher=("/bin/firered-batch",),
        name="j",
    )

    limit = parse_duration(plan.max_runtime)

    assert seconds / 2 <= limit < seconds
    assert seconds - limit >= min(60, seconds / 2)  # a margin for what is in flight


@pytest.mark.parametrize(
    ("every", "why"),
    [("30s", "at least 1m apart"), ("90.5s", "whole seconds"), ("soon", "not a duration")],
)
def test_schedule_refuses_an_interval_it_cannot_use(tmp_path, monkeypatch, every, why):
    job = _schedule_job(tmp_path, monkeypatch)

    code, out = _cli("schedule", str(job), "--every", every)

    assert code == 2 and why in out
    assert "[Timer]" not in out


def test_schedule_says_how_to_create_the_log_folder_and_the_key_file(tmp_path, monkeypatch):
    job = _schedule_job(tmp_path, monkeypatch)
    env = tmp_path / "home" / ".config" / "firered-batch" / "fal.env"

    out = _schedule(job, "15m")

    lines = out.splitlines()
    steps = [
        f"mkdir -p {tmp_path}/logs",
        f"mkdir -p {env.parent}",
        f"touch {env} && chmod 600 {env}",
    ]
    assert all(step in lines for step in steps), steps
    assert "FAL_KEY=<your fal key>" in out
    (line,) = _cron_lines(out)
    assert f" && set -a && . {env} && set +a && " in line
    assert f"EnvironmentFile={env}\n" in out

    # The steps work as printed: the folders, and a key file only its owner can read.
    for step in steps:
        assert _sh(step, tmp_path).returncode == 0, step
    assert (tmp_path / "logs").is_dir()
    assert env.stat().st_mode & 0o777 == 0o600


def test_the_cron_line_logs_a_missing_key_file(tmp_path, monkeypatch):
    job = _schedule_job(tmp_path, monkeypatch)
    env = tmp_path / "nowhere" / "fal.env"
    out = _schedule(job, "10m", "--env-file", str(env))
    (tmp_path / "logs").mkdir()

    ran = _sh(_cron_command(_cron_lines(out)[0]), Path("/"))

    assert ran.returncode != 0
    log = (tmp_path / "logs" / "nightly.log").read_text(encoding="utf-8")
    assert str(env) in log  # the shell's "cannot open" lands in the log, not in cron's mail


def test_a_local_job_needs_no_key_file(tmp_path, monkeypatch):
    job = _schedule_job(tmp_path, monkeypatch, local=True)

    out = _schedule(job, "5m", "--env-file", str(tmp_path / "fal.env"))

    assert "fal.env" not in out
    assert "EnvironmentFile=" not in out
    assert "chmod 600" not in out
    assert "No fal key: the job runs on `queue: local`" in out
    (line,) = _cron_lines(out)
    assert line == (
        f"*/5 * * * * {{ cd {tmp_path} && /{_executable(out)} run {job} --max-runtime 4m; }}"
        f" >> {tmp_path}/logs/nightly.log 2>&1"
    )
    assert f"mkdir -p {tmp_path}/logs" in out.splitlines()


def test_the_printout_is_quoted_for_the_shell_cron_and_systemd(tmp_path, monkeypatch):
    odd = tmp_path / "a b%'$x"
    odd.mkdir()
    job = _schedule_job(odd, monkeypatch, local=True, name="my job")

    out = _schedule(job, "20m")

    mkdir = next(line for line in out.splitlines() if line.startswith("mkdir -p '/"))
    assert _sh(mkdir, tmp_path).returncode == 0
    assert (odd / "logs").is_dir()
    (line,) = _cron_lines(out)
    command = _cron_command(line)
    words = shlex.split(command)
    assert words[:3] == ["{", "cd", str(odd)]
    assert [str(job), "--max-runtime", "18m;"] == words[words.index("run") + 1 : -4]
    assert words[-3:] == [">>", str(odd / "logs" / "my-job.log"), "2>&1"]
    # The real line, run as cron runs it: the job's run starts, in the job's folder, and logs
    # (an empty manifest: exit 2, and its message in the log).
    ran = _sh(command, Path("/"))
    assert ran.returncode == 2, ran.stderr
    assert "no rows below the header" in (odd / "logs" / "my-job.log").read_text(encoding="utf-8")
    # systemd: % and $ escaped, the quote wraps the whole word.
    assert "WorkingDirectory=" + str(odd).replace("%", "%%") + "\n" in out
    exec_start = f'run "{str(job).replace("%", "%%").replace("$", "$$")}" --max-runtime 18m\n'
    assert exec_start in out
    assert "firered-batch-my-job.timer" in out
