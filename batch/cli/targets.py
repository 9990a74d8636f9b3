"""What a command's TARGET names: a job file, a manifest run directly, or an output folder.

`load_spec` reads a job file or a manifest. `open_target` opens the ledger of any of the
three, for the commands that read one (status, report, export, retry, doctor): an output
folder (a folder that holds ledger.sqlite) stands for its job, whose name, endpoint and price
come from the latest run's settings in its ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from batch.cli.outcomes import remember_output
from batch.job import JobError, JobSpec, load_job
from batch.ledger import Ledger
from batch.manifest import display_path
from batch.manifest.pricing import PriceSpec

MANIFEST_SUFFIXES = {".csv", ".jsonl"}
YAML_SUFFIXES = {".yaml", ".yml"}  # a job file, or a manifest with `items:` or `matrix:`
ACCEPTED = (
    "not a manifest (.csv, .jsonl, or .yaml/.yml with items: or matrix:)"
    " nor a job file (.yaml/.yml with manifest:)"
)


def load_spec(target: str, overrides: dict[str, Any]) -> JobSpec:
    """A job file, or a manifest run directly (YAML manifests have `items:` or `matrix:`).
    Any other file is refused (`JobError`, exit 2) with what is accepted."""
    path = Path(target)
    suffix = path.suffix.lower()
    if suffix in MANIFEST_SUFFIXES or looks_like_manifest(path):
        spec = JobSpec.for_manifest(path)
    elif suffix in YAML_SUFFIXES:
        spec = load_job(path)
    else:
        raise JobError([f"{display_path(path)}: {ACCEPTED}"])
    spec = spec.with_overrides(**overrides)
    remember_output(spec.output)
    return spec


def looks_like_manifest(path: Path) -> bool:
    if path.suffix.lower() not in YAML_SUFFIXES or not path.is_file():
        return False
    head = path.read_text(encoding="utf-8-sig", errors="replace")[:65536]
    return any(line.startswith(("items:", "matrix:")) for line in head.splitlines())


@dataclass(frozen=True)
class Target:
    """The job a command works on: its output folder, name, endpoint and price, and its
    `spec` when TARGET was a job file or manifest (None for an output folder)."""

    output: Path
    name: str
    endpoint: str | None = None
    price: PriceSpec | None = None
    spec: JobSpec | None = None


def resolve_target(target: str, output: str | None) -> Target:
    """The job of a job file, a manifest or an output folder (`--output` only with the first
    two: an output folder is its own)."""
    path = Path(target)
    if path.is_dir():
        if output is not None:
            raise click.UsageError(f"--output: TARGET {target} is an output folder already")
        folder = path.resolve()
        remember_output(folder)
        return Target(folder, folder.name)
    spec = load_spec(target, {"output": output})
    return Target(spec.output, spec.name, spec.endpoint, spec.price, spec)


def open_target(target: str, output: str | None) -> tuple[Target, Ledger]:
    """The job and its ledger, which must exist (`LedgerMissingError`, exit 2, otherwise;
    also when an earlier run's outputs are there without it)."""
    job = resolve_target(target, output)
    ledger = Ledger.open(job.output, create=False)
    if job.spec is None:
        try:
            job = _from_settings(job, ledger)
        except BaseException:
            ledger.close()
            raise
    return job, ledger


def _from_settings(job: Target, ledger: Ledger) -> Target:
    """An output folder's job as its latest run recorded it."""
    run = ledger.last_run()
    settings = run.get("settings") if run else None
    if not isinstance(settings, dict):
        return job
    name = settings.get("name")
    endpoint = settings.get("endpoint")
    price: PriceSpec | None = None
    if isinstance(settings.get("price"), dict):
        try:
            price = PriceSpec.model_validate(settings["price"])
        except ValueError:
            price = None
    return Target(
        job.output,
        name if isinstance(name, str) and name else job.name,
        endpoint if isinstance(endpoint, str) else None,
        price,
    )
