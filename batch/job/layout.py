"""Where a sharded job's parts live, on local disk or in object storage.

    ROOT/job.json                   the job's division: N, the key function, the job's name
                                    (written once; another N is refused: `reshard` changes it)
    ROOT/shards/00003-of-00008/     one shard's output folder: ledger.sqlite, images/, thumbs/,
                                    results.csv, results.jsonl, report.html; in object storage
                                    also lease.json (its one writer) and journal/ (keys about
                                    to be submitted), and ledger.sqlite is a snapshot
    ROOT/merged/                    `firered-batch merge`: the combined ledger, results, report

ROOT is a local folder or an object store URL (s3://, gs://, az://, file://, memory://). With
object storage a shard works in a local folder (`--work-dir`, by default the job's usual output
folder) laid out the same way, mirrored to the store as it goes (`batch.pipeline.mirror`).

A run that is not sharded and writes to a local folder keeps the plain layout: ROOT is then the
output folder itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from batch.job.settings import AccountSpec
from batch.job.shards import KEY_FUNCTION, Shard, ShardError
from batch.job.spec import JobSpec

JOB_RECORD = "job.json"
SHARDS = "shards"
MERGED = "merged"
STORE_SCHEMES = ("s3://", "gs://", "az://", "file://", "memory://")


def is_store_url(text: str | os.PathLike[str] | None) -> bool:
    return isinstance(text, str) and text.lower().startswith(STORE_SCHEMES)


def shard_folder(root: Path, shard: Shard) -> Path:
    return root / SHARDS / shard.label


def shard_prefix(root_url: str, shard: Shard) -> str:
    return f"{root_url.rstrip('/')}/{SHARDS}/{shard.label}"


@dataclass(frozen=True)
class JobRecord:
    """What every shard of a job must agree on (``job.json``)."""

    name: str
    shards: int
    key_function: str = KEY_FUNCTION

    def dumps(self) -> bytes:
        body = {"name": self.name, "shards": self.shards, "key_function": self.key_function}
        return (json.dumps(body, indent=2) + "\n").encode()

    @classmethod
    def loads(cls, data: bytes, where: str) -> JobRecord:
        try:
            body = json.loads(data)
            return cls(str(body["name"]), int(body["shards"]), str(body["key_function"]))
        except (ValueError, KeyError, TypeError):
            raise ShardError(f"{where}: not a job record of firered-batch") from None

    def agrees(self, other: JobRecord, where: str) -> None:
        """ShardError unless `other` (the recorded one) divides the job the same way."""
        if other.key_function != self.key_function:
            why = f"divided with key function {other.key_function!r}; this version uses"
            raise ShardError(f"{where}: {why} {self.key_function!r}")
        if other.shards != self.shards:
            raise ShardError(
                f"{where}: this job is divided into {other.shards} shards, not {self.shards};"
                f" run its shards as I/{other.shards}, or change the division with"
                f" `firered-batch reshard ROOT --shards N` first"
            )


def claim_local_record(root: Path, record: JobRecord, *, write: bool = True) -> None:
    """Write ``ROOT/job.json`` if there is none (create-only), else check it agrees.
    `write` False (a dry run): only check."""
    path = root / JOB_RECORD
    if root.exists() and not root.is_dir():
        raise ShardError(f"--output {root}: not a folder")
    if not write:
        if path.is_file():
            record.agrees(JobRecord.loads(path.read_bytes(), str(path)), str(path))
        return
    root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        record.agrees(JobRecord.loads(path.read_bytes(), str(path)), str(path))
        return
    with os.fdopen(fd, "wb") as fh:
        fh.write(record.dumps())
        fh.flush()
        os.fsync(fh.fileno())


def read_local_record(root: Path) -> JobRecord | None:
    path = root / JOB_RECORD
    try:
        return JobRecord.loads(path.read_bytes(), str(path))
    except FileNotFoundError:
        return None


def local_shards(root: Path, count: int | None = None) -> list[tuple[str, Path]]:
    """(label, folder) of each shard folder under a local job root that has a ledger (of the
    job's `count` shards, when given: a folder of another division is not one of them)."""
    base = root / SHARDS
    if not base.is_dir():
        return []
    return sorted(
        (folder.name, folder)
        for folder in base.iterdir()
        if (folder / "ledger.sqlite").is_file() and of_count(folder.name, count)
    )


def of_count(label: str, count: int | None) -> bool:
    """Whether a shard folder's name is a shard of `count` (any count when None)."""
    return count is None or label.endswith(f"-of-{count:05d}")


@dataclass(frozen=True)
class Placed:
    """A run's settings placed in its job's layout, and the account it submits with."""

    spec: JobSpec
    shard: Shard | None
    root: str | None  # the job root (a URL, or a local folder) of a sharded run
    account: AccountSpec | None


def place(
    spec: JobSpec,
    *,
    output: str | None,
    shard: Shard | None,
    work_dir: Path | None,
    concurrency_given: bool,
    dry_run: bool = False,
) -> Placed:
    """Where this run writes: the plain output folder, a shard's folder under a local job root,
    or (object storage) a local work folder mirrored to the shard's folder in the store."""
    if is_store_url(output):
        assert output is not None
        if output.lower().startswith("file://") and not output.lower().startswith("file:///"):
            raise ShardError(f"--output {output}: a file:// URL takes an absolute path (file:///…)")
        shard = shard or Shard(0, 1)
        work = (work_dir or spec.output).resolve()
        spec = spec.with_overrides(
            output=shard_folder(work, shard), shard=str(shard), store=shard_prefix(output, shard)
        )
        root: str | None = output.rstrip("/")
    elif shard is not None:
        base = Path(output).resolve() if output else spec.output
        claim_local_record(base, JobRecord(spec.name, shard.count), write=not dry_run)
        spec = spec.with_overrides(output=shard_folder(base, shard), shard=str(shard))
        root = str(base)
    else:
        recorded = read_local_record(spec.output) if spec.output.is_dir() else None
        if recorded is not None:  # a whole run here would send every shard's items again
            raise ShardError(
                f"--output {spec.output}: the root of a job divided into {recorded.shards}"
                f" shards: run one with --shard I/{recorded.shards}"
            )
        return Placed(spec, None, None, _account(spec, Shard(0, 1))[0] if spec.accounts else None)
    account: AccountSpec | None = None
    if spec.accounts:
        account, sharing = _account(spec, shard)
        if not concurrency_given:
            spec = spec.with_overrides(concurrency=max(1, account.concurrency // sharing))
    return Placed(spec, shard, root, account)


def _account(spec: JobSpec, shard: Shard) -> tuple[AccountSpec, int]:
    """The account of `shard`, and how many shards share it: shards are dealt to accounts in
    proportion to their limits (largest remainder), in the order the job lists them."""
    accounts = spec.accounts
    total = sum(a.concurrency for a in accounts)
    quotas = [shard.count * a.concurrency / total for a in accounts]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(accounts)), key=lambda i: (counts[i] - quotas[i], i))
    for i in by_remainder[: shard.count - sum(counts)]:
        counts[i] += 1
    first = 0
    for account, count in zip(accounts, counts, strict=True):
        if shard.index < first + count:
            return account, count
        first += count
    raise AssertionError("every shard has an account")
