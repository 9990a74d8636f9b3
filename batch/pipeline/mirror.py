"""A shard whose job root is in object storage (`--output s3://…`): a run in a local work folder,
mirrored to the shard's folder in the store as it goes (layout: `batch.job.layout`).

- One writer per shard: ``lease.json`` is claimed create-only and renewed by compare-and-swap;
  a second writer exits with the lock code (5), and a run that loses its lease stops admitting.
- The ledger stays on local disk, where SQLite is safe; it is snapshotted to the store (SQLite's
  backup API) every `SNAPSHOT_EVERY_S` and at the end.
- Before any item of a batch is sent, its key is announced in ``journal/`` (one create-only
  object per batch). A shard that finds no ledger on its disk (a pod rescheduled elsewhere)
  restores the snapshot, then takes each announced item that has no request id as a submit on
  its way: it is looked for in fal's request history, as after a crash, and sent again only if
  fal never saw it — flagged `possible_duplicate` if that cannot be told.
- Output images are uploaded as they are written (`SYNC_EVERY_S`), and the exports, report and
  thumbnails at the end, each under the same relative path as in the work folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from batch.errors import ExitCode
from batch.fal.errors import TransientError
from batch.job import JobSpec
from batch.job.layout import JOB_RECORD, JobRecord
from batch.ledger import LEDGER_FILE, Ledger
from batch.pipeline.dispatch import StopSignal
from batch.pipeline.planning import plan_run
from batch.pipeline.run import run_job
from batch.pipeline.summary import RunSummary
from batch.remote import Journal, Lease, LeaseHeld, LeaseLost, Store, open_store, restore_sqlite
from batch.remote import snapshot_sqlite as snapshot

log = logging.getLogger("batch.run")

LEASE_TTL_S = 60.0
SNAPSHOT_EVERY_S = 60.0
SYNC_EVERY_S = 5.0
FIRST_S = 2.0
UPLOADS_AT_ONCE = 8
SNAPSHOT = "ledger.sqlite"
DERIVED = ("results.csv", "results.jsonl", "report.html")


async def run_mirrored(
    spec: JobSpec,
    *,
    root_url: str,
    record: JobRecord,
    lease_ttl: float = LEASE_TTL_S,
    **run_args: Any,
) -> RunSummary:
    """`run_job` for a shard whose folder is `spec.store`, working in `spec.output`.
    `lease_ttl`: how long the shard's lease lasts unrenewed (renewed every quarter of it)."""
    assert spec.store is not None
    root, store = open_store(root_url), open_store(spec.store)
    await root.check()
    await claim_store_record(root, record)
    lease = Lease(store, ttl_s=lease_ttl)
    await claim(lease, lease_ttl)
    stop: StopSignal = run_args.setdefault("stop", StopSignal())
    lost: list[LeaseLost] = []
    try:
        journal = Journal(store)
        await restore(spec, store, journal)
        sync = OutputSync(store, spec.output)
        await sync.start()
        ledger_path = spec.output / LEDGER_FILE
        async with (
            _every(lease_ttl / 4, _renewer(lease, stop, lost)),
            # The first soon after the start: the store then has the shard's planned items.
            _every(SNAPSHOT_EVERY_S, lambda: snapshot(ledger_path, store, SNAPSHOT), FIRST_S),
            _every(SYNC_EVERY_S, sync.run),
        ):
            summary = await run_job(spec, announce=JournalWriter(journal), **run_args)
        await sync.run()
        await sync.derived()
        await snapshot(ledger_path, store, SNAPSHOT)
        if lost:
            summary.exit_code, summary.message = ExitCode.LOCKED, str(lost[0])
        return summary
    finally:
        if not lost:
            await lease.release()


async def claim(lease: Lease, wait_s: float) -> None:
    """Claim the shard's lease. One held by a writer that stopped renewing it (a killed pod)
    lapses within its TTL, so a replacement waits that long for it before giving up (exit 5):
    a second live writer is still refused."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            await lease.claim()
            return
        except LeaseHeld as exc:
            if time.monotonic() >= deadline:
                raise
            if not said:
                log.warning("%s; waiting up to %.0f s for it to lapse", exc, wait_s)
                said = True
            await asyncio.sleep(min(5.0, max(0.1, wait_s / 20)))


async def claim_store_record(root: Store, record: JobRecord) -> None:
    """``job.json`` at the job root: written if there is none (create-only), else checked."""
    if await root.create(JOB_RECORD, record.dumps()) is None:
        record.agrees(JobRecord.loads(await root.get(JOB_RECORD), root.url(JOB_RECORD)), root.url())


async def restore(spec: JobSpec, store: Store, journal: Journal) -> None:
    """A shard with no ledger on this disk: the store's snapshot, and the journal's announced
    items taken as submits that may have been sent (see the module docstring)."""
    if (spec.output / LEDGER_FILE).exists():
        return  # this disk's ledger is the newest there is
    spec.output.mkdir(parents=True, exist_ok=True)
    if await restore_sqlite(store, SNAPSHOT, spec.output / LEDGER_FILE):
        log.info("restored the ledger from %s", store.url(SNAPSHOT))
        await _refetch_lost_images(spec.output, store)
    announced = await journal.entries()
    if not announced:
        return
    with Ledger.open(spec.output) as ledger:
        plan_run(spec, ledger)  # a shard lost before its first snapshot starts from the manifest
        marked = ledger.mark_announced(announced)  # (when, payload) by key
    if marked:
        log.warning(
            "%d items were about to be sent when this shard's last disk was lost: each is looked"
            " for in fal's request history before it is sent again",
            marked,
        )


async def _refetch_lost_images(folder: Path, store: Store) -> None:
    """Completed items of a restored ledger whose images never reached the store: their
    results are fetched again (re-attached, never submitted again)."""
    uploaded = set(await store.list("images/"))
    with Ledger.open(folder) as ledger:
        lost = {key for key, path in ledger.output_paths() if path not in uploaded}
        again = ledger.reattach_completed(sorted(lost))
    if again:
        log.warning("%d completed items lost their images with the last disk: fetched again", again)


class JournalWriter:
    """Names each submit in the journal just before it leaves. Submits that come while a
    segment is being written share the next one: one object per batch, not per submit."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._queued: list[tuple[str, Any, asyncio.Future[None]]] = []
        self._writing = False
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, key: str, payload: Mapping[str, Any] | None) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((key, payload, done))
        if not self._writing:
            self._writing = True
            self._task = asyncio.create_task(self._write())
        await done

    async def _write(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                payloads = {key: payload for key, payload, _ in batch if payload is not None}
                try:
                    await self.journal.announce([key for key, _, _ in batch], payloads)
                except Exception as exc:  # the submits wait: fal must not see them first
                    failure = TransientError(f"object storage journal: {exc}")
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(failure)
                else:
                    for _, _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._writing = False


class OutputSync:
    """Uploads the work folder's output images (new rows of the ledger's `outputs`) and, at
    the end, its exports, report and thumbnails."""

    def __init__(self, store: Store, folder: Path) -> None:
        self.store = store
        self.folder = folder
        self.uploaded: set[str] = set()
        self._after = 0  # outputs rows (rowid) already looked at

    async def start(self) -> None:
        self.uploaded = set(await self.store.list("images/"))

    async def run(self) -> None:
        rows = await asyncio.to_thread(self._new_outputs)
        await self._upload([path for path in rows if path not in self.uploaded])

    async def derived(self) -> None:
        thumbs = self.folder / "thumbs"
        done = set(await self.store.list("thumbs/"))
        paths = [p.relative_to(self.folder).as_posix() for p in thumbs.rglob("*") if p.is_file()]
        await self._upload([p for p in paths if p not in done])
        await self._upload([name for name in DERIVED if (self.folder / name).is_file()])

    def _new_outputs(self) -> list[str]:
        uri = f"file:{self.folder / LEDGER_FILE}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            rows = conn.execute(
                "SELECT rowid, path FROM outputs WHERE rowid > ? ORDER BY rowid", (self._after,)
            ).fetchall()
        if rows:
            self._after = rows[-1][0]
        return [path for _, path in rows]

    async def _upload(self, paths: list[str]) -> None:
        limit = asyncio.Semaphore(UPLOADS_AT_ONCE)

        async def one(path: str) -> None:
            local = self.folder / path
            if not local.is_file():
                return
            async with limit:
                await self.store.put_file(path, local)
            self.uploaded.add(path)

        await asyncio.gather(*map(one, paths))


def _renewer(
    lease: Lease, stop: StopSignal, lost: list[LeaseLost]
) -> Callable[[], Awaitable[None]]:
    async def renew() -> None:
        try:
            await lease.renew()
        except LeaseLost as exc:  # another writer took the shard: stop sending at once
            if not lost:
                lost.append(exc)
                log.error("%s", exc)
                stop.request("lease lost")

    return renew


@contextlib.asynccontextmanager
async def _every(
    seconds: float, step: Callable[[], Awaitable[object]], first: float | None = None
) -> AsyncIterator[None]:
    """Run `step` after `first` seconds (default `seconds`), then every `seconds`, while the
    block runs; a failed step is logged and tried again at the next turn (the final sync and
    snapshot after the run still have to succeed)."""

    async def loop() -> None:
        await asyncio.sleep(seconds if first is None else first)
        while True:
            try:
                await step()
            except Exception as exc:  # a store that is briefly unreachable: next turn
                log.warning("object storage: %s", exc)
            await asyncio.sleep(seconds)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
