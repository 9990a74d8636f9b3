"""How a command talks while it runs: log lines (plain or JSON) and the progress sink."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import click

from batch.cli.outcomes import LOG_FORMAT
from batch.pipeline.events import LogProgress, Progress, TqdmProgress
from batch.pipeline.summary import RunSummary


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, the message, and the fields of the record's
    `event` (`batch.pipeline.events.event`) when it has one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        fields = getattr(record, "event", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TqdmHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines written above a progress bar, which is then drawn again (not broken)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_logging(log_format: str) -> None:
    ctx = click.get_current_context(silent=True)
    if ctx is not None:  # an ending error is then said in the same format (`outcomes`)
        ctx.find_root().meta[LOG_FORMAT] = log_format
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        handler = TqdmHandler(sys.stderr) if sys.stdout.isatty() else logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("batch")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def progress_for(log_format: str, job: str = "") -> Progress:
    """A bar on a terminal; plain or JSON lines for cron and pipes."""
    if log_format == "json":
        return LogProgress(json_lines=True, job=job)
    if sys.stdout.isatty():
        return TqdmProgress()
    return LogProgress(job=job)


def say_summary(summary: RunSummary, log_format: str) -> None:
    """The run's closing words on stdout (its warnings on stderr): text, or with
    `--log-format json` one JSON object each, like every other line."""
    if log_format == "json":
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        for warning in summary.warnings:
            line = {"time": now, "level": "warning", "message": warning, "event": "warning"}
            click.echo(json.dumps(line, ensure_ascii=False), err=True)
        head = {"time": now, "level": "info", "message": summary.text().splitlines()[0]}
        click.echo(json.dumps({**head, **summary.as_dict()}, ensure_ascii=False, default=str))
        return
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(summary.text())
