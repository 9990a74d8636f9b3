"""The commands that read a job's ledger: status, report, export, retry, doctor.

Each takes TARGET: a job file, a manifest, or an output folder (`batch.cli.targets`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from batch.cli.shard_commands import root_status
from batch.cli.targets import open_target, resolve_target
from batch.errors import ExitCode
from batch.ledger.dataset import export_ledger_dataset
from batch.ledger.doctor import diagnose
from batch.ledger.prices import cached_price
from batch.ledger.redo import Change, drop_unwanted, redo_rejected
from batch.ledger.salvage import salvage
from batch.manifest import check_fields
from batch.outputs import run_lock
from batch.outputs.dataset import FORMATS as DATASET_FORMATS
from batch.pipeline.shards import is_job_root, merge_job
from batch.report import job_status, report_for, write_report
from batch.report.status import pilot_lines, review_lines

TARGET = click.Path(exists=True)  # a job file, a manifest, or an output folder
OUTPUT = click.option(
    "--output", type=click.Path(file_okay=False), help="Output folder (of a job or manifest)."
)


def _json_out(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@click.command()
@click.argument("target")
@OUTPUT
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(target: str, output: str | None, as_json: bool) -> None:
    """Show a job's items by state, failures by kind, and its latest run (throughput, ETA
    while it is live) — from the ledger only, no network. TARGET: a job file, a manifest or
    an output folder; or a sharded job's root (a folder or an object store URL): every shard.

    Example: firered-batch status jobs/demo.yaml --json
    """
    if is_job_root(target):
        root_status(target, as_json)
        return
    if not Path(target).exists():
        raise click.BadParameter(f"'{target}' does not exist", param_hint="'TARGET'")
    job, ledger = open_target(target, output)
    with ledger:
        price = job.price or (cached_price(ledger, job.endpoint) if job.endpoint else None)
        result = job_status(ledger, name=job.name, price=price, endpoint=job.endpoint)
        reviewed, pilot = ledger.reviews.review_counts().as_dict(), ledger.pilot_counts()
        extra = review_lines(ledger) + pilot_lines(ledger)
    if as_json:
        _json_out({**result.as_dict(), "reviews": reviewed, "pilot": pilot})
    else:
        click.echo("\n".join([result.text(), *extra]))


@click.command()
@click.argument("target")
@OUTPUT
def report(target: str, output: str | None) -> None:
    """Write the HTML contact sheet, <output>/report.html (every run writes it at its end).

    Each item's input and output thumbnails side by side, with prompt, seed, state, latency
    and errors; filters, search, a latency histogram. Works offline. For a sharded job's root
    (a folder or an object store URL): the report of every shard, ROOT/merged/report.html.
    Example: firered-batch report jobs/demo.yaml
    """
    if is_job_root(target):
        merged = asyncio.run(merge_job(target))
        click.echo(f"{merged.where}/report.html")
        return
    if not Path(target).exists():
        raise click.BadParameter(f"'{target}' does not exist", param_hint="'TARGET'")
    job, ledger = open_target(target, output)
    ledger.close()
    if job.spec is not None:
        written = report_for(job.spec)
    else:
        written = write_report(job.output, title=job.name, price=job.price, endpoint=job.endpoint)
    click.echo(str(written.path))


@click.command()
@click.argument("target", type=TARGET)
@OUTPUT
@click.option(
    "--format",
    "fmt",
    type=click.Choice(DATASET_FORMATS),
    help="A dataset of (input images, instruction, output image, seed, endpoint): folder"
    " (Hugging Face imagefolder + metadata.jsonl), jsonl, parquet (needs the [datasets] extra)"
    " or webdataset (tar shards).",
)
@click.option("--accepted", is_flag=True, help="Only the outputs approved in `review`.")
@click.option("--dest", type=click.Path(file_okay=False), help="Default: <output>/dataset-FORMAT.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export at --dest.")
def export(
    target: str,
    output: str | None,
    fmt: str | None,
    accepted: bool,
    dest: str | None,
    overwrite: bool,
) -> None:
    """Write results.csv and results.jsonl from the ledger again; or, with --format, export
    the completed (with --accepted: the approved) outputs as a dataset.

    Example: firered-batch export jobs/demo.yaml --accepted --format folder
    """
    job, ledger = open_target(target, output)
    with ledger:
        if fmt is None:
            if accepted or dest:
                raise click.UsageError("--accepted and --dest go with --format")
            paths = ledger.export()
            click.echo(f"{paths.csv}\n{paths.jsonl}")
            return
        chosen = [(k, i) for k, i, *_ in ledger.reviews.accepted_outputs()] if accepted else None
        if chosen == []:
            raise click.ClickException("no approved outputs yet: approve some in `review` first")
        summary = export_ledger_dataset(
            ledger,
            Path(dest) if dest else job.output / f"dataset-{fmt}",
            fmt,
            outputs=chosen,
            reviews=ledger.reviews.decisions(),
            overwrite=overwrite,
        )
    click.echo(summary.text())


# The error kinds a failed item can have in the ledger (its `error_kind`): fal's error classes
# (`FalError.kind`: transient, rate_limited, permanent, auth, account_locked, tls, error) and
# the pipeline's own (batch.pipeline: item, finish, dispatch; batch.ledger.salvage).
# tests/test_cli_small.py checks that the sources use no other.
ERROR_KINDS = (
    "transient",
    "rate_limited",
    "permanent",
    "auth",
    "account_locked",
    "tls",
    "error",
    "download",
    "upload",
    "input",
    "bad_output",
    "expired",
    "lost",
    "exhausted",
    "stuck",
)


@click.command()
@click.argument("target", type=TARGET)
@click.option(
    "--kind",
    metavar="KIND",
    help="Only failures of this kind (as `status` lists them: e.g. transient, permanent,"
    " download).",
)
@click.option(
    "--rejected",
    is_flag=True,
    help="Instead: redo the items with an output rejected in `review`, as new items linked to"
    " them (their outputs and decisions stay).",
)
@click.option("--new-seed", is_flag=True, help="With --rejected: the redo gets another seed.")
@click.option("--prompt", help="With --rejected: the redo's prompt.")
@click.option("--prompt-suffix", help="With --rejected: added to the end of the prompt.")
@OUTPUT
def retry(
    target: str,
    kind: str | None,
    rejected: bool,
    new_seed: bool,
    prompt: str | None,
    prompt_suffix: str | None,
    output: str | None,
) -> None:
    """Put failed items back to pending for the next run (all, or one error kind); or, with
    --rejected, redo the rejected ones.

    Items that failed only to download keep their request id and are re-attached, not paid
    for again. Example: firered-batch retry jobs/demo.yaml --kind transient
    """
    if not rejected and (new_seed or prompt is not None or prompt_suffix is not None):
        raise click.UsageError("--new-seed, --prompt and --prompt-suffix go with --rejected")
    if rejected:
        _redo(target, output, kind, Change(new_seed, prompt, prompt_suffix))
        return
    _job, ledger = open_target(target, output)
    with ledger:
        present = {group.kind: group.count for group in ledger.failures(limit=1000)}
        if kind is not None and kind not in ERROR_KINDS and kind not in present:
            raise click.BadParameter(
                f"{kind!r} is not an error kind; one of: {', '.join(sorted(ERROR_KINDS))}"
                f" (failed now: {_kinds(present)})",
                param_hint="'--kind'",
            )
        count = ledger.reset_to_pending(kind=kind)
    what = f"failed ({kind})" if kind else "failed"
    click.echo(f"{count} {what} items will be tried again by the next run")
    if kind is not None and count == 0 and present:
        click.echo(f"no failed items of kind {kind}; failed now: {_kinds(present)}", err=True)


def _redo(target: str, output: str | None, kind: str | None, change: Change) -> None:
    if kind is not None:
        raise click.UsageError("--kind goes with failed items, not with --rejected")
    if change.prompt is not None and change.prompt_suffix is not None:
        raise click.UsageError("--prompt or --prompt-suffix, not both")
    for name, text in (("--prompt", change.prompt), ("--prompt-suffix", change.prompt_suffix)):
        if text is not None:
            _, problems = check_fields({"prompt": text or " "}, Path.cwd())
            if problems or (name == "--prompt" and not text.strip()):
                why = problems[0][1] if problems else "must not be empty"
                raise click.BadParameter(why, param_hint=f"'{name}'")
    _job, ledger = open_target(target, output)
    with ledger, ledger.group() as conn:
        rejected = ledger.reviews.rejected_items()
        dropped = drop_unwanted(conn, set(rejected))
        made = redo_rejected(conn, rejected, change)
    for key in dropped:
        click.echo(f"{key}: dropped (not sent yet, and its item is no longer rejected)")
    for redo, original, changed in made:
        click.echo(f"{redo}: redo of {original}" + (" (its request changed)" if changed else ""))
    new = sum(1 for *_, changed in made if not changed)
    click.echo(f"{new} rejected items will be redone by the next run (new items)")


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())) or "none"


@click.command()
@click.argument("target", type=TARGET)
@OUTPUT
@click.option(
    "--recover",
    is_flag=True,
    help="Copy what a damaged ledger still holds into a new one (the damaged files are kept"
    " in <output>/damaged-<time>/), then check again.",
)
def doctor(target: str, output: str | None, recover: bool) -> None:
    """Check a job's output folder and ledger, and say what to do about what is wrong.

    The ledger is there and writable, SQLite's integrity check passes, every migration is
    applied, each completed item's files match the ledger (size, sha256), the disk has room.
    Reads only (but with --recover). Exits 0 when all is well, 2 when something is not.
    TARGET: a job file, a manifest or an output folder.

    Example: firered-batch doctor outputs/demo
    """
    job = resolve_target(target, output)
    if recover:
        with run_lock(job.output, check_ledger=False):  # no run may use it meanwhile
            salvaged = salvage(job.output)
        click.echo(
            "the ledger is not damaged: nothing to recover" if salvaged is None else salvaged.text()
        )
    result = diagnose(Path(job.output))
    click.echo(result.text())
    sys.exit(ExitCode.OK if result.healthy else ExitCode.INVALID)
