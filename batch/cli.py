"""The `firered-batch` command: arguments in, one library call, outcome → exit code.

Exit codes: 0 everything completed; 1 some items failed; 2 invalid manifest, job or arguments;
3 refused by the remote (auth); 4 interrupted or stopped early, resumable; 5 another run holds
the output folder's lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
from pathlib import Path
from typing import Any

import click

from batch.job import JobError, JobSpec, load_job
from batch.ledger import Ledger
from batch.lock import LockedError
from batch.manifest import ManifestError, scan
from batch.pipeline.events import LogProgress, Progress, TqdmProgress
from batch.pipeline.run import EXIT_INVALID, EXIT_LOCKED, run_job
from batch.schedule import make_schedule, parse_duration

MANIFEST_SUFFIXES = {".csv", ".jsonl"}


def _load_spec(target: str, overrides: dict[str, Any]) -> JobSpec:
    """A job file, or a manifest run directly (YAML manifests have `items:` or `matrix:`)."""
    path = Path(target)
    if path.suffix.lower() in MANIFEST_SUFFIXES or _looks_like_manifest(path):
        spec = JobSpec.for_manifest(path)
    else:
        spec = load_job(path)
    return spec.with_overrides(**overrides)


def _looks_like_manifest(path: Path) -> bool:
    if path.suffix.lower() not in {".yaml", ".yml"} or not path.is_file():
        return False
    head = path.read_text(encoding="utf-8-sig", errors="replace")[:65536]
    return any(line.startswith(("items:", "matrix:")) for line in head.splitlines())


def _fail_invalid(exc: Exception) -> None:
    click.echo(str(exc), err=True)
    sys.exit(EXIT_INVALID)


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


def _setup_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("batch")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _progress(log_format: str) -> Progress:
    if log_format == "json":
        return LogProgress(json_lines=True)
    if sys.stdout.isatty():
        return TqdmProgress()
    return LogProgress()


@click.group()
@click.version_option(package_name="firered-batch")
def main() -> None:
    """Bulk image edits through fal's queue API, resumable, with a local simulator."""


@main.command()
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
@click.option("--queue-url", help="fal queue URL, or 'local' for the embedded simulator.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Max requests in flight.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Max submits/s.")
@click.option("--wait", type=click.Choice(["poll", "stream"]), help="How to learn of results.")
@click.option("--output", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--dry-run", is_flag=True, help="Validate and plan only; send nothing.")
@click.option("--max-runtime", help="Stop admitting after this long (e.g. 50m), drain, exit 4.")
@click.option("--redo-changed", is_flag=True, help="Resubmit rows whose request changed.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
def run(
    target: str,
    queue_url: str | None,
    concurrency: int | None,
    rate: float | None,
    wait: str | None,
    output: str | None,
    dry_run: bool,
    max_runtime: str | None,
    redo_changed: bool,
    log_format: str,
) -> None:
    """Run (or resume) a job file or a manifest. The same command again resumes.

    Example: firered-batch run jobs/demo.yaml --concurrency 4 --max-runtime 50m
    """
    _setup_logging(log_format)
    overrides = {
        "queue": queue_url,
        "concurrency": concurrency,
        "rate": rate,
        "wait": wait,
        "output": output,
    }
    try:
        spec = _load_spec(target, overrides)
        seconds = parse_duration(max_runtime) if max_runtime else None
        summary = asyncio.run(
            run_job(
                spec,
                progress=_progress(log_format),
                handle_signals=True,
                dry_run=dry_run,
                max_runtime=seconds,
                redo_changed=redo_changed,
            )
        )
    except LockedError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_LOCKED)
    except (JobError, ManifestError, ValueError) as exc:
        _fail_invalid(exc)
        return
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(summary.text())
    sys.exit(summary.exit_code)


@main.command()
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
def validate(target: str) -> None:
    """Check a job file or manifest completely, without network; print counts.

    Example: firered-batch validate manifests/demo.csv
    """
    try:
        spec = _load_spec(target, {})
        result = scan(spec.manifest, endpoint=spec.endpoint, defaults=spec.defaults)
    except (JobError, ManifestError, ValueError) as exc:
        _fail_invalid(exc)
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(result.describe())


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--capacity", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--latency",
    default="uniform:0.2,0.8",
    show_default=True,
    help="fixed:S | uniform:LO,HI | lognormal:MEAN,SIGMA",
)
@click.option("--faults", type=click.Path(exists=True, dir_okay=False), help="Fault plan YAML.")
@click.option("--tls", is_flag=True, help="Serve https with a generated certificate.")
@click.option("--key", envvar="FIRERED_SIM_KEY", help="The accepted key (default: random).")
@click.option("--seed", type=int, default=0, show_default=True)
def sim(
    host: str,
    port: int,
    capacity: int,
    latency: str,
    faults: str | None,
    tls: bool,
    key: str | None,
    seed: int,
) -> None:
    """Serve the fal-compatible queue simulator until Ctrl-C.

    Example: firered-batch sim --port 8080 --capacity 4 --latency lognormal:0.5,0.6
    """
    from batch.sim import FaultPlan, SimConfig, run_forever

    settings: dict[str, Any] = {
        "host": host,
        "port": port,
        "capacity": capacity,
        "latency": latency,
        "tls": tls,
        "seed": seed,
    }
    if not key:
        # A fresh local key, shown so clients can use it (it is not a fal key).
        key = "sim-" + secrets.token_hex(8)
        click.echo(f"simulator key (set FAL_KEY to it in clients): {key}")
    settings["key"] = key
    if faults:
        settings["faults"] = FaultPlan.from_yaml(Path(faults))
    try:
        config = SimConfig.model_validate(settings)
    except ValueError as exc:
        _fail_invalid(exc)
        return
    run_forever(config)


@main.command()
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
@click.option("--kind", help="Only failures of this kind (e.g. transient, permanent, download).")
@click.option("--output", type=click.Path(file_okay=False), help="Output folder.")
def retry(target: str, kind: str | None, output: str | None) -> None:
    """Put failed items back to pending for the next run (all, or one error kind).

    Items that failed only to download keep their request id and are re-attached, not paid
    for again. Example: firered-batch retry jobs/demo.yaml --kind transient
    """
    with _open_ledger(target, output) as ledger:
        count = ledger.reset_to_pending(kind=kind)
    what = f"failed ({kind})" if kind else "failed"
    click.echo(f"{count} {what} items will be tried again by the next run")


@main.command()
@click.argument("job", type=click.Path(exists=True, dir_okay=False))
@click.option("--every", required=True, help="Interval: 15m, 1h, 6h, 1d ...")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), help="Where runs log.")
@click.option("--env-file", type=click.Path(dir_okay=False), help="File with FAL_KEY=...")
def schedule(job: str, every: str, log_file: str | None, env_file: str | None) -> None:
    """Print a crontab line and a systemd service + timer that run JOB on a schedule.

    Run it from the folder the job should run in. Example:
    firered-batch schedule jobs/catalog.yaml --every 30m
    """
    try:
        load_job(Path(job))
        plan = make_schedule(
            Path(job),
            every,
            log=Path(log_file) if log_file else None,
            env_file=Path(env_file) if env_file else None,
        )
    except (JobError, ValueError) as exc:
        _fail_invalid(exc)
        return
    click.echo(plan.text())


def _json_out(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _open_ledger(target: str, output: str | None) -> Ledger:
    try:
        spec = _load_spec(target, {"output": output})
    except (JobError, ManifestError, ValueError) as exc:
        _fail_invalid(exc)
        raise
    if not (spec.output / "ledger.sqlite").exists():
        _fail_invalid(ValueError(f"{spec.output}: no ledger yet (has this job been run?)"))
    return Ledger.open(spec.output)


@main.command()
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(target: str, output: str | None, as_json: bool) -> None:
    """Show a job's items by state and its latest failures (reads the ledger only).

    Example: firered-batch status jobs/demo.yaml
    """
    with _open_ledger(target, output) as ledger:
        counts = ledger.counts()
        failures = ledger.failures(limit=10)
    if as_json:
        _json_out(
            {
                "counts": counts,
                "failures": [
                    {
                        "kind": f.kind,
                        "count": f.count,
                        "example_key": f.example_key,
                        "example_message": f.example_message,
                    }
                    for f in failures
                ],
            }
        )
        return
    total = sum(counts.values())
    click.echo(f"{total} items")
    for state in ("completed", "failed", "submitted", "pending"):
        click.echo(f"  {state:<10} {counts.get(state, 0):>8}")
    for group in failures:
        click.echo(f"failed ({group.kind}): {group.count}, e.g. {group.example_key}: ")
        click.echo(f"    {group.example_message}")


@main.command()
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", type=click.Path(file_okay=False), help="Output folder.")
def export(target: str, output: str | None) -> None:
    """Write results.csv and results.jsonl from the ledger again.

    Example: firered-batch export jobs/demo.yaml
    """
    with _open_ledger(target, output) as ledger:
        paths = ledger.export()
    click.echo(f"{paths.csv}\n{paths.jsonl}")


if __name__ == "__main__":
    main()
