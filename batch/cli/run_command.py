"""`firered-batch run`: a job file or a manifest, run (or resumed) to its end; a shard of a
sharded job, locally or mirrored to object storage (`batch.pipeline.mirror`)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import click

from batch.cli.collector import fewer_collections
from batch.cli.logs import progress_for, say_summary, setup_logging
from batch.cli.options import (
    account_credentials,
    fal_settings,
    input_options,
    webhook_options,
    webhook_settings,
)
from batch.cli.targets import load_spec as _load_spec
from batch.job import JobError, parse_duration
from batch.job.layout import JobRecord, is_store_url, place
from batch.job.shards import parse_shard
from batch.outputs import run_lock, set_aside
from batch.pipeline.mirror import run_mirrored
from batch.pipeline.run import run_job


@click.command()
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
