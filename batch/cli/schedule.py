"""Scheduling help: the crontab line and systemd units that run a job on a schedule.

Nothing here runs anything: `firered-batch schedule` prints text for the user to install. A
scheduled run is the ordinary `run` command; its lock makes overlapping runs harmless, and
`--max-runtime` (a little under the interval) keeps each run inside its window.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from batch.job import parse_duration


def cron_spec(seconds: float) -> str:
    """The crontab time fields for "every `seconds`" (minutes dividing an hour, hours, a day)."""
    minutes = int(seconds // 60)
    if seconds % 60 or minutes < 1:
        raise ValueError("cron schedules are in whole minutes")
    if minutes < 60:
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    if minutes % 60 == 0 and minutes // 60 < 24:
        hours = minutes // 60
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    if minutes == 1440:
        return "0 0 * * *"
    raise ValueError("use an interval of whole minutes under an hour, whole hours, or 1d")


@dataclass(frozen=True)
class Schedule:
    job: Path
    every: float
    workdir: Path
    log: Path
    env_file: Path
    executable: Path
    name: str

    @property
    def max_runtime(self) -> str:
        """90% of the interval, so one run ends before the next is due."""
        return f"{max(60, int(self.every * 0.9)) // 60}m"

    def command(self) -> str:
        return " ".join(
            shlex.quote(str(p))
            for p in (self.executable, "run", self.job, "--max-runtime", self.max_runtime)
        )

    def crontab(self) -> str:
        env = shlex.quote(str(self.env_file))
        return (
            f"{cron_spec(self.every)} cd {shlex.quote(str(self.workdir))} && "
            f"set -a && . {env} && set +a && {self.command()} "
            f">> {shlex.quote(str(self.log))} 2>&1"
        )

    def service(self) -> str:
        return "\n".join(
            [
                "[Unit]",
                f"Description=firered-batch job {self.name}",
                "After=network-online.target",
                "Wants=network-online.target",
                "",
                "[Service]",
                "Type=oneshot",
                f"WorkingDirectory={self.workdir}",
                f"EnvironmentFile={self.env_file}",
                f"ExecStart={self.command()}",
                f"StandardOutput=append:{self.log}",
                f"StandardError=append:{self.log}",
                "# exit 4 = stopped at --max-runtime, resumable; 5 = another run had the lock",
                "SuccessExitStatus=4 5",
                "",
            ]
        )

    def timer(self) -> str:
        return "\n".join(
            [
                "[Unit]",
                f"Description=Run firered-batch job {self.name} every {int(self.every)} s",
                "",
                "[Timer]",
                "OnBootSec=2min",
                f"OnUnitActiveSec={int(self.every)}s",
                "Persistent=true",
                "",
                "[Install]",
                "WantedBy=timers.target",
                "",
            ]
        )

    def text(self) -> str:
        unit = f"firered-batch-{self.name}"
        return "\n".join(
            [
                f"# The fal key goes in {self.env_file} (one line: FAL_KEY=...), chmod 600.",
                f"# Logs: {self.log}",
                "",
                "# --- crontab (crontab -e) ---",
                self.crontab(),
                "",
                f"# --- systemd: ~/.config/systemd/user/{unit}.service ---",
                self.service(),
                f"# --- systemd: ~/.config/systemd/user/{unit}.timer ---",
                self.timer(),
                "# then: systemctl --user daemon-reload && "
                f"systemctl --user enable --now {unit}.timer",
            ]
        )


def make_schedule(
    job: Path, every: str, *, log: Path | None = None, env_file: Path | None = None
) -> Schedule:
    job = job.resolve()
    seconds = parse_duration(every)
    cron_spec(seconds)  # refuse intervals cron cannot say, before printing anything
    workdir = Path.cwd().resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", job.stem).strip("-") or "job"
    executable = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else Path("firered-batch")
    if executable.name != "firered-batch":
        executable = Path(sys.executable).resolve().parent / "firered-batch"
    return Schedule(
        job=job,
        every=seconds,
        workdir=workdir,
        log=(log or workdir / "logs" / f"{name}.log").resolve(),
        env_file=(env_file or Path.home() / ".config" / "firered-batch" / "fal.env").resolve(),
        executable=executable,
        name=name,
    )
