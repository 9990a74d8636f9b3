"""The `firered-batch` commands: arguments in, one library call, outcome → exit code
(`batch.errors.ExitCode`; errors become exit codes in `batch.cli.outcomes`)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import click

from batch import crashpoints
from batch.cli.collector import fewer_collections
from batch.cli.ledger_commands import doctor, export, report, retry, status
from batch.cli.logs import setup_logging
from batch.cli.options import (
    webhook_options,
    webhook_settings,
)
from batch.cli.outcomes import Commands, fail, listen_failed
from batch.cli.review_command import review
from batch.cli.run_command import run
from batch.cli.schedule import make_schedule
from batch.cli.shard_commands import merge, reshard, split
from batch.cli.targets import load_spec as _load_spec
from batch.errors import ExitCode
from batch.job import JobError, load_job
from batch.manifest import LocalFiles, scan


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="firered-batch")
def main() -> None:
    """Bulk image edits through fal's queue API, resumable, with a local simulator."""
    crashpoints.arm_from_env()  # tests of crash safety only; unset, nothing is armed


for _command in (status, report, export, retry, doctor):  # those that read a job's ledger
    main.add_command(_command)
for _command in (merge, split, reshard):  # a sharded job's
    main.add_command(_command)
main.add_command(review)
main.add_command(run)


@main.command()
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
def validate(target: str) -> None:
    """Check a job file or manifest completely, without network; print counts.

    Example: firered-batch validate manifests/demo.csv
    """
    spec = _load_spec(target, {})
    files = LocalFiles(spec.image_limits)  # local images checked with the job's limits
    result = scan(spec.manifest, endpoint=spec.endpoint, defaults=spec.defaults, files=files)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(result.describe())
    # The cost, or output sizes learnt from local and inline inputs: what the line above lacks.
    if spec.price is not None or result.estimate.unknown_items != result.unknown_size_items:
        click.echo(f"estimate: {result.estimate.text(spec.price)}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--capacity",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Requests the simulated runners process at once; the rest wait in the queue.",
)
@click.option(
    "--latency",
    default="uniform:0.2,0.8",
    show_default=True,
    help="fixed:S | uniform:LO,HI | lognormal:MEAN,SIGMA",
)
@click.option("--faults", type=click.Path(exists=True, dir_okay=False), help="Fault plan YAML.")
@click.option("--tls", is_flag=True, help="Serve https with a generated certificate.")
@click.option("--key", envvar="FIRERED_SIM_KEY", help="The accepted key (default: random).")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of latencies and faults."
)
@click.option(
    "--max-submits-per-second",
    type=click.FloatRange(min=0, min_open=True),
    help="Answer 429 (with Retry-After) to submits beyond this rate.",
)
@click.option(
    "--webhook-retry-scale",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Compress fal's webhook retry schedule (10 retries over ~2 h) by this factor.",
)
@click.option(
    "--balance-usd",
    type=click.FloatRange(min=0),
    help="The account's credit: once billed requests use it up, submits get fal's 403.",
)
@click.option(
    "--cancel-mode",
    type=click.Choice(["signal", "abort"]),
    default="signal",
    show_default=True,
    help="signal: a cancelled running request still finishes and is billed, as on fal.",
)
def sim(
    host: str,
    port: int,
    capacity: int,
    latency: str,
    faults: str | None,
    tls: bool,
    key: str | None,
    seed: int,
    max_submits_per_second: float | None,
    webhook_retry_scale: float,
    balance_usd: float | None,
    cancel_mode: str,
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
        "max_submits_per_second": max_submits_per_second,
        "webhook_retry_scale": webhook_retry_scale,
        "balance_usd": balance_usd,
        "cancel_mode": cancel_mode,
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
        fail(exc, ExitCode.INVALID)
    try:
        run_forever(config)
    except OSError as exc:
        listen_failed(exc, host, port)


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
    load_job(Path(job))
    try:
        plan = make_schedule(
            Path(job),
            every,
            log=Path(log_file) if log_file else None,
            env_file=Path(env_file) if env_file else None,
        )
    except ValueError as exc:
        raise JobError([f"--every: {exc}"]) from None
    click.echo(plan.text())


@main.group()
def webhook() -> None:
    """Receive a job's results by webhook (after `run --detach`)."""


@webhook.command("serve")
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--queue-url",
    help="The queue URL the job was run with (default: the job file's `queue`; for a manifest,"
    " fal's).",
)
@click.option("--output", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--until-done", is_flag=True, help="Exit once no item is waiting at fal.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: plain log lines; json: one JSON object per log line.",
)
@webhook_options
def webhook_serve(
    target: str,
    queue_url: str | None,
    output: str | None,
    until_done: bool,
    log_format: str,
    **options: Any,
) -> None:
    """Receive the webhooks of TARGET's job and finalize its items until Ctrl-C (or --until-done).

    TARGET: the job file or manifest given to `run --detach` (with a manifest, give the same
    --queue-url). Every delivery is verified (headers, timestamp, size, Ed25519 signature
    against the JWKS, a request of this job) before the item's outputs are downloaded.

    Example: firered-batch webhook serve jobs/catalog.yaml --webhook-listen 127.0.0.1:8787
    """
    from batch.pipeline.webhook_serve import serve_webhooks

    setup_logging(log_format)
    overrides = {"queue": queue_url, "output": output, "webhook": webhook_settings(options)}
    spec = _load_spec(target, overrides)
    with fewer_collections():
        summary = asyncio.run(serve_webhooks(spec, until_done=until_done, handle_signals=True))
    click.echo(summary.text())


if __name__ == "__main__":
    main()
