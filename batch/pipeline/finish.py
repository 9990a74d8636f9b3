"""Finishing an item whose request fal completed: its result, its downloads, its completion; and
the item's final or retry transitions, whoever makes them.

Both the run's item tasks (`batch.pipeline.item`) and `webhook serve` finish items, so this is
what they share, with the few things finishing needs (`Finisher`). Every item transition goes
through the ledger's group commit (`batch.ledger.group`), decided here in one place: the caller
does nothing else for its item until its transition is committed (DESIGN invariants 1 and 2).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from batch.fal import (
    Completed,
    FalError,
    NotFoundError,
    PermanentError,
    QueueClient,
    RateLimitedError,
    RequestHandle,
    TransientError,
)
from batch.fal.adapters import normalize_result
from batch.ledger import InvalidTransitionError, ItemRow, Ledger
from batch.ledger.group import GroupCommit
from batch.outputs import DownloadError, OutputRecord, Publisher, download_image, safe_name
from batch.pipeline.events import RunStats, event
from batch.pipeline.policy import RetryPolicy, retrying
from batch.schema import EditOutput, OutputImage

log = logging.getLogger("batch.run")

DOWNLOAD_TIMEOUT = 120.0
MAX_IMAGE_BYTES = 200 * 1024 * 1024
MIN_DOWNLOADS, MAX_DOWNLOADS = 16, 128
EXPIRED_STATUSES = frozenset({403, 404, 410})  # an output URL past its media expiration


def download_limit(concurrency: int) -> int:
    """Downloads at once for `concurrency` fal slots: one for every two slots, 16 to 128.

    Enough downloads must run for them to keep up with the results (completions per second
    times the time a download takes, by Little's law): results come at most `concurrency` per
    service time, and a download usually takes well under half a service time. With too few,
    finished requests pile up behind new submits; each running download holds one image in
    memory, hence the ceiling (`benchmarks/throughput.py` measures the choice).
    """
    return min(MAX_DOWNLOADS, max(MIN_DOWNLOADS, concurrency // 2))


@dataclass(kw_only=True)
class Finisher:
    """What finishing items needs; `webhook serve` builds only this, a run its `ItemContext`."""

    client: QueueClient
    ledger: Ledger
    writes: GroupCommit  # every item transition goes through it
    policy: RetryPolicy
    stats: RunStats
    output_dir: Path
    filename_template: str
    downloads: asyncio.Semaphore
    publisher: Publisher = field(default_factory=Publisher)

    async def aclose(self) -> None:
        """Publish what is being written, then commit every queued transition."""
        await self.publisher.aclose()
        self.writes.flush()


class Later(Exception):
    """The item wants another turn at `when` (a time.monotonic() value)."""

    def __init__(self, when: float) -> None:
        super().__init__(when)
        self.when = when


class Finished(Exception):
    """The item reached a final state (completed or failed) and is recorded so."""


class LeftForLater(Exception):
    """The item stays as the ledger has it (say `submitted`) for a later run; this run is done
    with it (fal gave no answer about its request, or the disk is full)."""


def handle_of(client: QueueClient, row: ItemRow) -> RequestHandle | None:
    """The request an item is waiting for, or None if it has none at fal."""
    if row.state != "submitted" or not row.request_id:
        return None
    if row.status_url and row.response_url and row.cancel_url:
        return RequestHandle(
            row.endpoint, row.request_id, row.status_url, row.response_url, row.cancel_url
        )
    return client.handle_for(row.endpoint, row.request_id)


@dataclass(frozen=True)
class Fetched:
    """A completed request's output, and what fal billed for it (when it said)."""

    output: EditOutput
    billable_units: float | None = None


async def finish_item(
    ctx: Finisher, row: ItemRow, handle: RequestHandle, completed: Completed
) -> float | None:
    """Finalize an item whose request has completed (a webhook said so): its result (the
    delivered output, or fetched), downloads, completion — as `run_item` does after waiting.
    Returns when to come back, or None when the item is done."""
    try:
        fetched = await fetch_result(ctx, row, handle, completed)
        await collect(ctx, row, handle, fetched, shared=True)
    except Later as later:
        return later.when
    except (Finished, InvalidTransitionError):
        pass
    return None


async def fetch_result(
    ctx: Finisher,
    row: ItemRow,
    handle: RequestHandle,
    completed: Completed | None = None,
) -> Fetched:
    """The output of a completed request: the one a webhook delivered, or fetched from fal.
    `completed` None: fetch it again (its image URLs expired)."""
    units: float | None = None
    try:
        if completed is not None and completed.output is not None:
            body = completed.output
        else:
            result = await ctx.client.result(handle)
            body, units = result.output, result.billable_units
    except NotFoundError as exc:
        await retry(ctx, row, exc, kind="expired")  # the result is gone: the only way is again
    except (TransientError, RateLimitedError) as exc:
        if completed is not None and completed.failed:
            await retry(ctx, row, exc)  # the job itself failed for a passing reason: resubmit
        raise Later(time.monotonic() + ctx.policy.backoff(2)) from None
    except PermanentError as exc:
        await fail(ctx, row, exc.kind, str(exc), error_type=exc.error_type)
    try:
        return Fetched(EditOutput.model_validate(normalize_result(row.endpoint, body)), units)
    except ValidationError as exc:
        await fail(ctx, row, "bad_output", f"result does not match the output schema: {exc}")


async def collect(
    ctx: Finisher, row: ItemRow, handle: RequestHandle, fetched: Fetched, *, shared: bool
) -> None:
    """Download the outputs and mark the item completed. `shared`: another finalizer may have
    finished the item meanwhile; then nothing is downloaded (the ledger's transition refuses a
    second completion either way, this only saves the downloads).

    Output media URLs expire (fal's media expiration): a download that finds its URL gone
    fetches the result again, once, for fresh URLs. The request is paid for; it is never sent
    again for a download."""
    if shared and ctx.ledger.state(row.key) != "submitted":
        raise Finished()  # finalized meanwhile by another finalizer (a webhook receiver)
    try:
        records = await _download_all(ctx, fetched.output, row.key)
    except DownloadError as exc:
        if exc.status not in EXPIRED_STATUSES:
            await fail(ctx, row, "download", str(exc))
        fetched = await fetch_result(ctx, row, handle)  # fresh URLs
        try:
            records = await _download_all(ctx, fetched.output, row.key)
        except DownloadError as again:
            await fail(ctx, row, "download", str(again))
    output = fetched.output
    await ctx.writes.write(
        lambda: ctx.ledger.mark_completed(
            row.key,
            records,
            seed=output.seed,
            timings=dict(output.timings),
            nsfw=list(output.has_nsfw_concepts),
            billable_units=fetched.billable_units,
        )
    )
    ctx.stats.completed += 1


async def _download_all(ctx: Finisher, output: EditOutput, key: str) -> list[OutputRecord]:
    records: list[OutputRecord] = []
    for index, image in enumerate(output.images):
        records.append(await _download(ctx, key, index, image, output.seed))
    return records


async def _download(
    ctx: Finisher, key: str, index: int, image: OutputImage, seed: int | None
) -> OutputRecord:
    """One output image, its transient failures retried (`DownloadError` after that)."""
    template = ctx.filename_template
    name = safe_name(template, key=key, index=index, ext=_ext(image), seed=seed or 0)
    dest = ctx.output_dir / "images" / name

    async def once() -> OutputRecord:
        async with ctx.downloads:
            got = await download_image(
                ctx.client.session,
                image.url,
                dest,
                expect_width=image.width,
                expect_height=image.height,
                expect_content_type=image.content_type,
                timeout=DOWNLOAD_TIMEOUT,
                max_bytes=MAX_IMAGE_BYTES,
                publisher=ctx.publisher,
            )
        return got.to_record(index, ctx.output_dir)

    try:
        return await retrying(once, ctx.policy, attempts=ctx.policy.download_attempts)
    except DownloadError as exc:
        # The request succeeded and is paid for: never resubmit it for a download. The item
        # fails as `download` with its request id kept, so `retry` can re-attach to it later.
        raise DownloadError(
            f"download of image {index} failed: {exc}", transient=exc.transient, status=exc.status
        ) from None


def _ext(image: OutputImage) -> str:
    content_type = (image.content_type or "").lower()
    if "jpeg" in content_type or "jpg" in content_type:
        return "jpg"
    if "webp" in content_type:
        return "webp"
    return "png"


async def retry(
    ctx: Finisher,
    row: ItemRow,
    exc: FalError,
    *,
    kind: str | None = None,
    delay: float | None = None,
) -> NoReturn:
    """Back to pending for another submit (attempts permitting), or failed."""
    kind = kind or exc.kind
    error_type = exc.error_type
    current = ctx.ledger.get(row.key)
    attempts = current.attempts if current is not None else row.attempts
    if attempts >= ctx.policy.attempts:
        await fail(ctx, row, kind, f"{exc} (after {attempts} attempts)", error_type=error_type)
    wait = ctx.policy.backoff(max(attempts, 1)) if delay is None else delay
    not_before = time.time() + wait
    await ctx.writes.write(
        lambda: ctx.ledger.mark_retry(row.key, kind, str(exc), not_before, error_type=error_type)
    )
    ctx.stats.retried += 1
    raise Later(time.monotonic() + wait)


async def record_failure(
    ctx: Finisher, key: str, kind: str, message: str, *, error_type: str | None = None
) -> None:
    """Mark the item failed (with fal's error type, when it gave one), and count it."""
    await ctx.writes.write(
        lambda: ctx.ledger.mark_failed(key, kind, message, error_type=error_type)
    )
    ctx.stats.failed += 1
    ctx.stats.failed_by_kind[kind] += 1
    fields = {"key": key, "kind": kind, "error": message, "error_type": error_type}
    log.warning("item %s failed (%s): %s", key, kind, message, extra=event("item_failed", **fields))


async def fail(
    ctx: Finisher, row: ItemRow, kind: str, message: str, *, error_type: str | None = None
) -> NoReturn:
    await record_failure(ctx, row.key, kind, message, error_type=error_type)
    raise Finished()
