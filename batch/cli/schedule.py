"""Scheduling help: the crontab line and systemd units that run a job on a schedule.

Nothing here runs anything: `firered-batch schedule` prints text for the user to install. A
scheduled run is the ordinary `run` command; its lock makes overlapping runs harmless, and
`--max-runtime` (always below the interval) makes each run stop sending new work in time.

cron's `*/N` steps restart every hour (minutes) or every day (hours), so cron runs a job at even
intervals only when N divides 60 minutes or 24 hours: any other interval gets no crontab line
(only the systemd timer, whose `OnUnitActiveSec=` is a steady interval).
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from batch.job import load_job, parse_duration

CRON_MINUTES = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)  # the divisors of 60 below 60
CRON_HOURS = (1, 2, 3, 4, 6, 8, 12)  # the divisors of 24 below 24
CRON_INTERVALS = "1, 2, 3, 4, 5, 6, 10, 12, 15, 20 or 30m; 1, 2, 3, 4, 6, 8 or 12h; or 1d"
MIN_INTERVAL = 60  # seconds: `--every` is at least a minute
DAY = 86400


def duration_text(seconds: int) -> str:
    """`seconds` as `parse_duration` reads it back, largest units first: 1d, 21h36m, 1m30s."""
    parts = []
    for unit, size in (("d", DAY), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _at(steps: list[int], unit: str) -> str:
    shown = [str(s) for s in steps]
    if len(shown) > 3:
        shown = [shown[0], shown[1], "...", shown[-1]]
    if len(shown) == 2:
        return f"{unit} {shown[0]} and {shown[1]}"
    return f"{unit} {', '.join(shown)}"


def cron_spec(seconds: float) -> str:
    """The crontab time fields that run something every `seconds`, at even gaps; ValueError,
    saying why, for an interval cron cannot keep."""
    if seconds % 60:
        raise ValueError(f"cron counts whole minutes, and {duration_text(int(seconds))} is not")
    minutes = int(seconds // 60)
    if minutes in CRON_MINUTES:
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    if minutes % 60 == 0 and minutes // 60 in CRON_HOURS:
        hours = minutes // 60
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    if minutes == DAY // 60:
        return "0 0 * * *"
    if minutes < 60:
        steps = list(range(0, 60, minutes))
        raise _uneven(f"*/{minutes} * * * *", _at(steps, "minutes"), "hour", 60 - steps[-1], "m")
    if minutes % 60 == 0 and minutes < DAY // 60:
        hours = minutes // 60
        steps = list(range(0, 24, hours))
        raise _uneven(f"0 */{hours} * * *", _at(steps, "hours"), "day", 24 - steps[-1], "h")
    raise ValueError(f"cron has no step of {duration_text(minutes * 60)}")


def _uneven(spec: str, at: str, period: str, gap: int, unit: str) -> ValueError:
    return ValueError(f"`{spec}` runs at {at} of each {period}, so one gap is only {gap}{unit}")


def _cron_escape(command: str) -> str:
    """cron turns an unescaped % into a newline (before the shell sees the line)."""
    return command.replace("%", "\\%")


def _unit_value(path: Path) -> str:
    """A path as a systemd setting's value: taken literally, but % starts a specifier."""
    return str(path).replace("%", "%%")


def _exec_word(word: str) -> str:
    """One word of a systemd `ExecStart=` line (its own quoting, not the shell's: %, $ and
    backslashes are special, and a quote may only wrap a whole word)."""
    if re.fullmatch(r"[A-Za-z0-9_@+=:,./-]+", word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


@dataclass(frozen=True)
class Schedule:
    job: Path
    every: int  # seconds
    workdir: Path
    log: Path
    env_file: Path | None  # None: the job needs no fal key (queue: local)
    launcher: tuple[str, ...]  # the firered-batch command: its script, or python -m batch
    name: str

    @property
    def every_text(self) -> str:
        return duration_text(self.every)

    @property
    def max_runtime(self) -> str:
        """The run's `--max-runtime`: the interval less a margin of 10%, at least a minute (at
        most half the interval), in whole minutes from 2m on: always below the interval."""
        margin = min(max(self.every * 0.1, 60.0), self.every / 2)
        limit = int(self.every - margin)
        if limit >= 120:
            limit -= limit % 60
        return duration_text(limit)

    @property
    def cron(self) -> str | None:
        try:
            return cron_spec(self.every)
        except ValueError:
            return None

    @property
    def cron_refusal(self) -> str | None:
        """Why there is no crontab line (None when there is one)."""
        try:
            cron_spec(self.every)
        except ValueError as exc:
            return (
                f"cron cannot run a job every {self.every_text}: {exc}. cron keeps even gaps"
                f" only every {CRON_INTERVALS}; use the systemd timer below, which runs it"
                f" every {self.every_text}"
            )
        return None

    def argv(self) -> list[str]:
        return [*self.launcher, "run", str(self.job), "--max-runtime", self.max_runtime]

    def command(self) -> str:
        return shlex.join(self.argv())

    def crontab(self) -> str:
        """The crontab line; ValueError when cron cannot keep the interval. Everything, a
        missing key file or folder included, is logged (once the log folder exists)."""
        steps = [f"cd {shlex.quote(str(self.workdir))}"]
        if self.env_file is not None:
            steps += ["set -a", f". {shlex.quote(str(self.env_file))}", "set +a"]
        steps.append(self.command())
        line = f"{{ {' && '.join(steps)}; }} >> {shlex.quote(str(self.log))} 2>&1"
        return f"{cron_spec(self.every)} {_cron_escape(line)}"

    def service(self) -> str:
        lines = [
            "[Unit]",
            f"Description=firered-batch job {self.name}",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=oneshot",
            f"WorkingDirectory={_unit_value(self.workdir)}",
        ]
        if self.env_file is not None:
            lines.append(f"EnvironmentFile={_unit_value(self.env_file)}")
        lines += [
            f"ExecStart={' '.join(_exec_word(word) for word in self.argv())}",
            f"StandardOutput=append:{_unit_value(self.log)}",
            f"StandardError=append:{_unit_value(self.log)}",
            "# exit 4 = stopped at --max-runtime, resumable; 5 = another run had the lock",
            "SuccessExitStatus=4 5",
        ]
        return "\n".join(lines)

    def timer(self) -> str:
        return "\n".join(
            [
                "[Unit]",
                f"Description=Run firered-batch job {self.name} every {self.every_text}",
                "",
                "[Timer]",
                "OnBootSec=2min",
                f"OnUnitActiveSec={self.every}s",
                "",
                "[Install]",
                "WantedBy=timers.target",
            ]
        )

    def key_steps(self) -> list[str]:
        if self.env_file is None:
            return [
                "# 2. No fal key: the job runs on `queue: local` (the embedded simulator), so no"
                " key file is read.",
            ]
        env = shlex.quote(str(self.env_file))
        return [
            "# 2. The fal key, in a file only you can read (never in the crontab or the unit):",
            f"mkdir -p {shlex.quote(str(self.env_file.parent))}",
            f"touch {env} && chmod 600 {env}",
            "#    then put one line in it, FAL_KEY=<your fal key> (or two: FAL_KEY_ID=..."
            f" and FAL_KEY_SECRET=...), e.g. with: ${{EDITOR:-nano}} {env}",
        ]

    def text(self) -> str:
        unit = f"firered-batch-{self.name}"
        folder = "~/.config/systemd/user"
        cron = (
            ["# 3a. crontab (crontab -e), add this line:", self.crontab()]
            if self.cron is not None
            else [f"# 3a. No crontab line: {self.cron_refusal}."]
        )
        return "\n".join(
            [
                f"# firered-batch job {self.name}, every {self.every_text}, run in"
                f" {shlex.quote(str(self.workdir))}",
                "",
                "# 1. The log folder (without it a run can neither start nor log why):",
                f"mkdir -p {shlex.quote(str(self.log.parent))}",
                *self.key_steps(),
                "",
                f"# Each run gets --max-runtime {self.max_runtime}, below the {self.every_text}"
                f" interval: after {self.max_runtime} it sends no new items,",
                "# finishes those in flight and exits 4 (resumable), normally before the next run"
                " is due",
                "# (a run that finds the last one still going exits 5 and does nothing).",
                "",
                *cron,
                "",
                f"# 3b. or a systemd timer (user units; this replaces any earlier {unit} files):",
                f"mkdir -p {folder}",
                f"cat > {folder}/{unit}.service <<'EOF'",
                self.service(),
                "EOF",
                f"cat > {folder}/{unit}.timer <<'EOF'",
                self.timer(),
                "EOF",
                f"systemctl --user daemon-reload && systemctl --user enable --now {unit}.timer",
                'loginctl enable-linger "$USER"   # so that it also runs while you are logged out',
            ]
        )


def make_schedule(
    job: Path, every: str, *, log: Path | None = None, env_file: Path | None = None
) -> Schedule:
    """The schedule of `job` every `every` (ValueError for an interval that cannot be used;
    one cron cannot keep still gets the systemd timer). A `queue: local` job reads no key
    file, so `env_file` is ignored for it."""
    seconds = parse_duration(every)
    if seconds < MIN_INTERVAL:
        raise ValueError(f"{every!r} is too short: schedule a job at least 1m apart")
    if seconds % 1:
        raise ValueError(f"{every!r}: an interval is whole seconds")
    spec = load_job(job)
    job = job.resolve()
    workdir = Path.cwd().resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", job.stem).strip("-.") or "job"
    launcher = _launcher()
    paths = [job, workdir, *map(Path, launcher)]
    key_file: Path | None = None
    if not spec.local:
        key_file = (env_file or Path.home() / ".config" / "firered-batch" / "fal.env").resolve()
        paths.append(key_file)
    log_file = (log or workdir / "logs" / f"{name}.log").resolve()
    for path in [*paths, log_file]:
        if "\n" in str(path) or "\r" in str(path):
            raise ValueError(f"{str(path)!r}: a path with a line break cannot be scheduled")
    return Schedule(
        job=job,
        every=int(seconds),
        workdir=workdir,
        log=log_file,
        env_file=key_file,
        launcher=launcher,
        name=name,
    )


def _launcher() -> tuple[str, ...]:
    """How cron or systemd starts this same firered-batch: the script that is running, else
    the one next to this Python (not resolved: a virtualenv's python is a symlink out of it),
    else this Python with `-m batch`."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "firered-batch" and argv0.is_file():
        return (str(argv0.resolve()),)
    python = Path(sys.executable).absolute()
    script = python.parent / "firered-batch"
    if script.is_file():
        return (str(script),)
    return (str(python), "-m", "batch")
