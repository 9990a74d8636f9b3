"""The `firered-batch` commands: arguments in, one library call, outcome → exit code
(`batch.errors.ExitCode`; errors become exit codes in `batch.cli.outcomes`)."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import click

from batch import crashpoints
from batch.cli.collector import fewer_collections
from batch.cli.ledger_commands import doctor, export, report, retry, status
from batch.cli.logs import progress_for, say_summary, setup_logging
from batch.cli.options import (
    account_credentials,
    fal_settings,
    input_options,
    webhook_options,
    webhook_settings,
)
from batch.cli.outcomes import Commands, fail, listen_failed
from batch.cli.review_command import review
from batch.cli.schedule import make_schedule
from batch.cli.shard_commands import merge, reshard, split
from batch.cli.targets import load_spec as _load_spec
from batch.errors import ExitCode
from batch.job import JobError, load_job, parse_duration
from batch.job.layout import JobRecord, is_store_url, place
from batch.job.shards import parse_shard
from batch.manifest import LocalFiles, scan
from batch.outputs import run_lock, set_aside
from batch.pipeline.mirror import run_mirrored
from batch.pipeline.run import run_job


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


@main.command()
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
@click.option("--queue-url", help="fal queue URL, or 'local' for the embedded simulator.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Max requests in flight.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Max submits/s.")
@click.option(
    "--wait", type=click.Choice(["poll", "stream", "webhook"]), help="How to learn of results."
)
@click.option(
    "--output",
    help="Output folder; or, for a sharded job, its root: a folder or an object store URL"
    " (s3://, gs://, az://, file://; needs the [cloud] extra).",
)
@click.option(
    "--shard",
    metavar="I/N|auto",
    help="Run shard I of N (0-based) of the job; auto: from the environment (Kubernetes"
    " Indexed Job, Slurm array, FIRERED_SHARD_INDEX/COUNT).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    help="With an object store --output: the local folder the shard works in (its ledger"
    " lives there). Default: the job's usual output folder.",
)
@click.option(
    "--endpoint",
    "endpoints",
    multiple=True,
    metavar="ID",
    help="fal endpoint; repeat it to compare models: every item runs on each (the key"
    " includes the endpoint).",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    help="A pilot: run only N items, a random sample stable across reruns (the full run"
    " later skips what the pilot finished).",
)
@click.option("--sample-seed", type=int, default=0, show_default=True, help="The sample's seed.")
@click.option(
    "--lease-ttl",
    default="60s",
    show_default=True,
    help="With an object store --output: how long the shard's lease lasts unrenewed; a"
    " replacement of a killed run waits at most this long for it.",
)
@click.option("--dry-run", is_flag=True, help="Validate and plan only; send nothing.")
@click.option("--max-runtime", help="Stop admitting after this long (e.g. 50m), drain, exit 4.")
@click.option("--redo-changed", is_flag=True, help="Resubmit rows whose request changed.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: log lines, and a progress bar on a terminal; json: one JSON object per line"
    " (logs and progress), for cron and log collectors.",
)
@click.option("--detach", is_flag=True, help="Submit with webhooks and exit (see webhook serve).")
@click.option(
    "--start-over",
    is_flag=True,
    help="Move the output folder's files aside (into <output>.set-aside-<time>/, nothing is"
    " deleted) and run the job from scratch: every item is sent, and paid for, again.",
)
@webhook_options
@input_options
def run(
    target: str,
    queue_url: str | None,
    concurrency: int | None,
    rate: float | None,
    wait: str | None,
    output: str | None,
    shard: str | None,
    work_dir: str | None,
    endpoints: tuple[str, ...],
    sample: int | None,
    sample_seed: int,
    lease_ttl: str,
    dry_run: bool,
    max_runtime: str | None,
    redo_changed: bool,
    log_format: str,
    start_over: bool,
    **input_settings: Any,
) -> None:
    """Run (or resume) a job file or a manifest. The same command again resumes.

    Example: firered-batch run jobs/demo.yaml --concurrency 4 --max-runtime 50m
    """
    setup_logging(log_format)
    detach = bool(input_settings.pop("detach", False))
    webhook = webhook_settings(input_settings)
    fal = fal_settings(input_settings)
    overrides = {
        "fal": fal,
        "queue": queue_url,
        "concurrency": concurrency,
        "rate": rate,
        "wait": wait,
        "output": None if shard is not None or is_store_url(output) else output,
        "webhook": webhook,
        "endpoint": endpoints[0] if len(endpoints) == 1 else None,
        "endpoints": list(endpoints) if len(endpoints) > 1 else None,
        **input_settings,
    }
    placed = place(
        _load_spec(target, overrides),
        output=output,
        shard=parse_shard(shard, os.environ) if shard is not None else None,
        work_dir=Path(work_dir) if work_dir else None,
        concurrency_given=concurrency is not None,
        dry_run=dry_run,
    )
    spec = placed.spec
    seconds = _duration("--max-runtime", max_runtime) if max_runtime else None
    if start_over:
        if dry_run or spec.store:
            raise click.UsageError("--start-over: not with --dry-run or an object store")
        _start_over(spec.output)
    args: dict[str, Any] = {
        "progress": progress_for(log_format, job=spec.name),
        "handle_signals": True,
        "dry_run": dry_run,
        "max_runtime": seconds,
        "redo_changed": redo_changed,
        "detach": detach,
        "credentials": account_credentials(placed.account, needed=not spec.local),
        "account": placed.account.name if placed.account else None,
        "sample": None if sample is None else (sample, sample_seed),
    }
    with fewer_collections():
        if spec.store and not dry_run:
            assert placed.root is not None and placed.shard is not None
            record = JobRecord(spec.name, placed.shard.count)
            ttl = _duration("--lease-ttl", lease_ttl)
            if not 1 <= ttl <= 86_400:
                raise click.BadParameter("from 1s to 24h", param_hint="'--lease-ttl'")
            job = run_mirrored(spec, root_url=placed.root, record=record, lease_ttl=ttl, **args)
        else:
            job = run_job(spec, **args)
        summary = asyncio.run(job)
    say_summary(summary, log_format)
    sys.exit(summary.exit_code)


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


def _start_over(output: Path) -> None:
    """--start-over: the output folder's files moved aside (under its lock), never deleted."""
    with run_lock(output, check_ledger=False):
        moved = set_aside(output)
    if moved is not None:
        click.echo(
            f"starting over: the earlier files of {output} are now in {moved};"
            " every item is sent (and paid for) again",
            err=True,
        )


def _duration(option: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise JobError([f"{option}: {exc}"]) from None


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
