"""A sharded job as a whole: `merge` its shards into one ledger, exports and report, and the
state of every shard (`status` of a job root). The root is a local folder or an object store
URL (layout: `batch.job.layout`); shards are read, never written.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from batch.errors import InvalidInputError
from batch.job.layout import (
    JOB_RECORD,
    MERGED,
    SHARDS,
    JobRecord,
    is_store_url,
    local_shards,
    of_count,
    read_local_record,
)
from batch.ledger import LEDGER_FILE, Ledger
from batch.ledger.merge import MergeResult, merge_ledgers
from batch.remote import MissingObjectError, Store, open_store
from batch.report import write_report


class NotAJobRootError(InvalidInputError):
    """A folder or URL without the `job.json` of a sharded job; exit 2."""


@dataclass
class ShardState:
    label: str
    counts: dict[str, int]


@dataclass
class JobRootState:
    """Every shard's items by state (`status` of a job root)."""

    root: str
    record: JobRecord
    shards: list[ShardState] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for shard in self.shards:
            for state, n in shard.counts.items():
                total[state] = total.get(state, 0) + n
        return total

    def missing(self) -> list[str]:
        """Shards with no ledger yet (not started, or not snapshotted yet)."""
        n = self.record.shards
        labels = {f"{i:05d}-of-{n:05d}" for i in range(n)}
        return sorted(labels - {s.label for s in self.shards})

    def as_dict(self) -> dict[str, object]:
        return {
            "root": self.root,
            "shards": self.record.shards,
            "totals": self.totals(),
            "by_shard": {s.label: s.counts for s in self.shards},
            "missing": self.missing(),
        }

    def text(self) -> str:
        states = sorted({state for s in self.shards for state in s.counts})
        lines = [f"{self.record.name}: {self.record.shards} shards at {self.root}"]
        header = ["shard", *states]
        rows = [[s.label, *(str(s.counts.get(k, 0)) for k in states)] for s in self.shards]
        rows.append(["total", *(str(self.totals().get(k, 0)) for k in states)])
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
        for label in self.missing():
            lines.append(f"shard {label}: no ledger yet")
        return "\n".join(lines)


def is_job_root(target: str) -> bool:
    return is_store_url(target) or (Path(target) / JOB_RECORD).is_file()


async def root_state(root: str) -> JobRootState:
    with tempfile.TemporaryDirectory(prefix="firered-shards-") as tmp:
        record, ledgers = await _ledgers(root, Path(tmp))
        state = JobRootState(root, record)
        for label, path in ledgers:
            with Ledger.open(path.parent, create=False) as ledger:
                state.shards.append(ShardState(label, ledger.counts()))
    return state


@dataclass(frozen=True)
class Merged:
    result: MergeResult
    where: str
    seconds: float
    missing: list[str]


async def merge_job(root: str) -> Merged:
    """Merge the shards under `root` into ``ROOT/merged/`` (ledger, results, report)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="firered-merge-") as tmp:
        record, ledgers = await _ledgers(root, Path(tmp))
        store = open_store(root) if is_store_url(root) else None
        dest = Path(tmp) / MERGED if store is not None else Path(root) / MERGED
        shards = [(label, path, f"../{SHARDS}/{label}/") for label, path in ledgers]
        result = merge_ledgers(shards, dest)
        with Ledger.open(dest, create=False) as ledger:
            ledger.export(dest)
        write_report(dest, title=record.name)
        if store is not None:
            for path in sorted(p for p in dest.rglob("*") if p.is_file()):
                if not path.name.startswith(LEDGER_FILE + "-"):
                    await store.put_file(f"{MERGED}/{path.relative_to(dest).as_posix()}", path)
        where = f"{root.rstrip('/')}/{MERGED}" if store is not None else str(dest)
        state = JobRootState(root, record, [ShardState(label, {}) for label, _ in ledgers])
    return Merged(result, where, time.monotonic() - started, state.missing())


async def _ledgers(root: str, tmp: Path) -> tuple[JobRecord, list[tuple[str, Path]]]:
    """The job record and (label, ledger file) of each shard; from object storage, each
    shard's latest snapshot, downloaded into `tmp`."""
    if not is_store_url(root):
        record = read_local_record(Path(root))
        if record is None:
            raise NotAJobRootError(f"{root}: no {JOB_RECORD} here: not the root of a sharded job")
        folders = local_shards(Path(root), record.shards)
        return record, [(label, folder / LEDGER_FILE) for label, folder in folders]
    store = open_store(root)
    try:
        record = JobRecord.loads(await store.get(JOB_RECORD), store.url(JOB_RECORD))
    except MissingObjectError:
        raise NotAJobRootError(f"{store.url()}: no {JOB_RECORD}: not a sharded job") from None
    return record, await _download_snapshots(store, tmp, record.shards)


async def _download_snapshots(store: Store, tmp: Path, count: int) -> list[tuple[str, Path]]:
    found = []
    for key in await store.list(f"{SHARDS}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == LEDGER_FILE and of_count(parts[1], count):
            path = tmp / SHARDS / parts[1] / LEDGER_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            await store.get_file(key, path)
            found.append((parts[1], path))
    return sorted(found)
