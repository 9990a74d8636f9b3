"""`firered-batch review`: serve a job's report with approve / reject / note per output image
(`batch.report.review`) until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
from pathlib import Path
from typing import Literal

import click

from batch.cli.outcomes import listen_failed
from batch.cli.targets import open_target
from batch.ledger import Ledger
from batch.ledger.reviews import check_reviewer
from batch.report import write_report
from batch.report.review import ReviewJob, new_token, review_server

Verdict = Literal["approved", "rejected"]
TARGET = click.Path(exists=True)  # a job file, a manifest, or an output folder


def default_reviewer() -> str:
    """Who decides, unless --reviewer says: the login name ($USER, $LOGNAME, the account)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "reviewer"


@click.command()
@click.argument("target", type=TARGET)
@click.option(
    "--output", type=click.Path(file_okay=False), help="Output folder (of a job or manifest)."
)
@click.option("--reviewer", help="Name your decisions are recorded under (default: $USER).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port to listen on (0: a free one).",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a --host other machines can reach (the token then travels over plain http).",
)
@click.option(
    "--approve",
    multiple=True,
    metavar="KEY[:N]",
    help="Approve an item's output images (or output N) and exit, without the page; repeat it.",
)
@click.option("--reject", multiple=True, metavar="KEY[:N]", help="Likewise, reject.")
@click.option("--note", help="With --approve/--reject: the note recorded with the decisions.")
def review(
    target: str,
    output: str | None,
    reviewer: str | None,
    host: str,
    port: int,
    allow_remote: bool,
    approve: tuple[str, ...],
    reject: tuple[str, ...],
    note: str | None,
) -> None:
    """Review a job's output images in the browser: approve, reject or note each one.

    Serves the report on 127.0.0.1 at a URL with a random token (only who has the URL can see
    or decide) until Ctrl-C. Keys: j/k move, a approve, r reject, n note, u undo, ? help.
    Decisions go into the ledger (several reviewers at once never overwrite each other unseen),
    into `status`, and into report.html, which still opens offline. TARGET: a job file, a
    manifest or an output folder. A run may work on the folder meanwhile.

    Example: firered-batch review outputs/demo --reviewer alice
    """
    try:
        name = check_reviewer(reviewer or default_reviewer())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--reviewer") from None
    if note is not None and not (approve or reject):
        raise click.UsageError("--note goes with --approve or --reject")
    job, ledger = open_target(target, output)
    compared = tuple(job.spec.endpoints) if job.spec is not None else ()
    if approve or reject:
        with ledger:
            asked: list[tuple[Verdict, tuple[str, ...]]] = [
                ("approved", approve),
                ("rejected", reject),
            ]
            for decision, refs in asked:
                for ref in refs:
                    for key, index in _outputs(ledger, ref):
                        ledger.reviews.decide(key, index, decision, note, reviewer=name)
                        click.echo(f"{decision} {key} output {index + 1}")
        write_report(
            job.output, title=job.name, price=job.price, endpoint=job.endpoint, endpoints=compared
        )
        return
    ledger.close()
    about = ReviewJob(job.name, job.price, job.endpoint, compared)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(job.output, name, host, port, allow_remote, about))
    except OSError as exc:
        listen_failed(exc, host, port)


def _outputs(ledger: Ledger, ref: str) -> list[tuple[str, int]]:
    """KEY (every output image of the item) or KEY:N (output N, counted from 1); a key that
    itself ends in ``:N`` is the item of that key."""
    key, number = ref, ""
    outputs = ledger.outputs(ref)
    head, _, tail = ref.rpartition(":")
    if not outputs and head and tail.isascii() and tail.isdigit():
        key, number = head, tail
        outputs = ledger.outputs(key)
    if not outputs:
        raise click.BadParameter(f"{key!r}: no completed item with outputs", param_hint="KEY")
    if not number:
        return [(key, o.index) for o in outputs]
    if not 1 <= int(number) <= len(outputs):
        why = f"{key!r} has {len(outputs)} output images, not {number}"
        raise click.BadParameter(why, param_hint="KEY:N")
    return [(key, int(number) - 1)]


async def _serve(
    output: Path, reviewer: str, host: str, port: int, allow_remote: bool, job: ReviewJob
) -> None:
    server = review_server(
        output,
        token=new_token(),
        reviewer=reviewer,
        host=host,
        port=port,
        allow_remote=allow_remote,
        job=job,
    )
    async with server as served:
        click.echo(f"Reviewing {output} as {reviewer}: open {served.url}")
        click.echo("Ctrl-C stops (report.html is written again with the decisions).")
        await asyncio.Event().wait()
