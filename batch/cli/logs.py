"""How a command talks while it runs: log lines (plain or JSON) and the progress sink."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from batch.pipeline.events import LogProgress, Progress, TqdmProgress


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, and the message (already JSON if it is one)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
        }
        try:
            parsed = json.loads(message)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            entry.update(parsed)
        else:
            entry["message"] = message
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("batch")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def progress_for(log_format: str) -> Progress:
    """A bar on a terminal; plain or JSON lines for cron and pipes."""
    if log_format == "json":
        return LogProgress(json_lines=True)
    if sys.stdout.isatty():
        return TqdmProgress()
    return LogProgress()
