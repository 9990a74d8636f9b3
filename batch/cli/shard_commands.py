"""The commands of a sharded job: `merge` its shards, `split` its manifest, and the job root's
`status` (`batch.pipeline.shards`)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import click

from batch.cli.targets import load_spec
from batch.job.shards import Shard, shard_path, split_rows
from batch.manifest import LocalFiles
from batch.pipeline.reshard import reshard as do_reshard
from batch.pipeline.shards import merge_job, root_state


@click.command()
@click.argument("root")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def merge(root: str, as_json: bool) -> None:
    """Build a sharded job's combined ledger, results.csv/.jsonl and report.html in
    ROOT/merged/ from its shards' ledgers (read-only; run it again at any time). ROOT: the
    job's --output, a folder or an object store URL.

    Example: firered-batch merge s3://bucket/jobs/catalog
    """
    merged = asyncio.run(merge_job(root))
    result = merged.result
    if as_json:
        body = {
            "merged": merged.where,
            "shards": result.shards,
            "items": result.items,
            "outputs": result.outputs,
            "seconds": round(merged.seconds, 3),
            "missing_shards": merged.missing,
        }
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(
        f"merged {result.shards} shards: {result.items} items, {result.outputs} output images"
        f" → {merged.where} ({merged.seconds:.1f} s)"
    )
    for label in merged.missing:
        click.echo(f"shard {label}: no ledger yet (not started, or not snapshotted yet)", err=True)


@click.command()
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
@click.option("--shards", "count", type=click.IntRange(1, 100_000), required=True, help="N.")
@click.option(
    "--out-dir", type=click.Path(file_okay=False), help="Where the files go (default: beside)."
)
def split(target: str, count: int, out_dir: str | None) -> None:
    """Split a CSV or JSONL manifest (or a job file's) into N manifests, one per shard, each
    row in the shard of its item's key: then each shard reads only its own rows. The whole
    manifest is validated first; nothing is written if a row is invalid.

    Example: firered-batch split manifests/big.csv --shards 8
    """
    spec = load_spec(target, {})
    folder = Path(out_dir) if out_dir else None
    rows = split_rows(
        spec.manifest,
        count,
        endpoint=spec.endpoint,
        defaults=spec.defaults,
        files=LocalFiles(spec.image_limits),
        out_dir=folder,
    )
    for index, n in enumerate(rows):
        click.echo(f"{shard_path(spec.manifest, Shard(index, count), folder)}: {n} rows")


@click.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--shards", "count", type=click.IntRange(1, 100_000), required=True, help="M.")
def reshard(root: str, count: int) -> None:
    """Divide a sharded job (a local job root) into M shards instead of its N. Only when no
    shard runs and none has requests in flight: items, their outputs and images move to the
    shard their key hashes to; the old shard folders are set aside, never deleted.

    Example: firered-batch reshard outputs/catalog --shards 8
    """
    done = do_reshard(Path(root), count)
    click.echo(
        f"{done.items} items: {done.before} shards → {done.after}; the old shard folders are"
        f" in {done.set_aside}"
    )


def root_status(root: str, as_json: bool) -> None:
    """`status` of a sharded job's root: every shard's items by state, and the totals."""
    state = asyncio.run(root_state(os.fspath(root)))
    click.echo(json.dumps(state.as_dict(), indent=2) if as_json else state.text())
