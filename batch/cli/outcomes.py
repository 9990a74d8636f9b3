"""Outcomes → exit codes: the one place a command's errors become what the user sees.

An error the package raised on purpose (`batch.errors.BatchError`) is its message on stderr
and its `exit_code`. Anything else is a bug: one line naming it and the file the full traceback
was written to (in the output folder, beside the ledger, when the command knew it; else the
system's temporary folder), and `ExitCode.CRASH`. Never a raw traceback, never "invalid input".

A fault of the host that reaches here unnamed — an `OSError` of a full disk or a refused write,
a SQLite error of a full disk or a damaged or read-only ledger — is not a bug: it becomes the
error it means (`batch.outputs.faults`, `batch.ledger.faults`) and that error's exit code.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import sqlite3
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click

from batch.errors import BatchError, ExitCode
from batch.ledger import LEDGER_FILE
from batch.ledger.faults import sqlite_fault
from batch.outputs.faults import NO_SPACE, host_error

OUTPUT_DIR = "output_dir"  # ctx.meta key: the output folder, once a command knows it


def remember_output(output_dir: Path) -> None:
    """Tell the crash handler where this command's output folder is."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[OUTPUT_DIR] = output_dir


LOG_FORMAT = "log_format"  # ctx.meta key: "json" when the command logs JSON lines


def say_error(message: str, code: ExitCode, **fields: Any) -> None:
    """An ending error on stderr: its text, or one JSON line under `--log-format json`."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get(LOG_FORMAT) == "json":
        line = {
            "time": datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S"),
            "level": "error",
            "message": message,
            "event": "error",
            "exit_code": int(code),
            **fields,
        }
        click.echo(json.dumps(line, ensure_ascii=False, default=str), err=True)
    else:
        click.echo(message, err=True)


def fail(exc: BaseException, code: ExitCode) -> NoReturn:
    say_error(str(exc), code)
    sys.exit(code)


class Commands(click.Group):
    """A click group whose commands end in an exit code from `ExitCode`, whatever they raise."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BatchError as exc:
            fail(exc, exc.exit_code)
        except Exception as exc:
            fault = host_fault(exc, ctx.meta.get(OUTPUT_DIR))
            if fault is not None:
                fail(fault, fault.exit_code)
            log = write_crash_log(exc, ctx.meta.get(OUTPUT_DIR))
            say_error(
                f"firered-batch crashed: {type(exc).__name__}: {exc}\n"
                f"the full traceback is in {log}; nothing already completed is lost, and "
                "running the same command again resumes (please report this crash)",
                ExitCode.CRASH,
                crash_log=str(log),
            )
            sys.exit(ExitCode.CRASH)


def listen_failed(exc: OSError, host: str, port: int) -> NoReturn:
    """A server (`sim`, `review`) that could not listen: a port in use or not allowed, or a host
    that is not this machine's, is one line and exit 2; any other OSError is raised on."""
    if exc.errno == errno.EADDRINUSE:
        why = f"port {port} is in use; choose another with --port"
    elif exc.errno == errno.EACCES:
        why = f"port {port}: not allowed (ports below 1024 need privileges); choose another"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = f"--host {host}: not an address of this machine"
    else:
        raise exc
    click.echo(why, err=True)
    sys.exit(ExitCode.INVALID)


def host_fault(exc: Exception, output_dir: Path | None) -> BatchError | None:
    """The error a fault of the host means (a full disk, a refused write, a damaged ledger),
    or None for anything else."""
    if isinstance(exc, OSError):
        if exc.errno in NO_SPACE or _inside(exc.filename, output_dir):
            return host_error(exc)
        return None  # say, a manifest that cannot be read: not the output folder's fault
    if isinstance(exc, sqlite3.Error) and output_dir is not None:
        return sqlite_fault(exc, Path(output_dir) / LEDGER_FILE)
    return None


def _inside(filename: object, folder: Path | None) -> bool:
    if folder is None or not isinstance(filename, str | bytes | os.PathLike):
        return False
    path = Path(os.path.abspath(os.fsdecode(filename)))
    return path == Path(folder) or path.is_relative_to(os.path.abspath(folder))


def write_crash_log(exc: BaseException, output_dir: Path | None) -> Path:
    """Write the traceback to ``crash-<UTC time>-<pid>.log`` and return its path."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"crash-{stamp}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(exc))
    command = sys.argv[1] if len(sys.argv) > 1 else ""  # not the arguments: they may be private
    for folder in (output_dir, Path(tempfile.gettempdir())):
        if folder is None:
            continue
        path = Path(folder) / name
        try:
            path.write_text(f"firered-batch {command}\n{text}", encoding="utf-8")
        except OSError:
            continue
        return path
    return Path(name)  # nowhere writable: the line still names the error
