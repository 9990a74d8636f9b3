"""One item's way through fal: submit (or re-attach), wait, result, download, complete.

Every ledger write is made right where the fact becomes known, and the item does nothing else
until it is committed: the intent before a submit is sent, the request id before anything else
is awaited after a submit returns (invariant 2), and `completed` only after all its files are on
disk (invariant 1). The frequent three are group-committed with the other items' of the same
turn of the event loop (`batch.ledger.group`); the rare ones are a transaction each. A function
here returns the time at which the item wants another turn, or None when it is finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
from pydantic import ValidationError

from batch.crashpoints import crashpoint
from batch.fal import (
    AmbiguousSubmitError,
    AuthError,
    Completed,
    FalError,
    NotFoundError,
    PermanentError,
    QueueClient,
    RateLimitedError,
    RequestHandle,
    TransientError,
)
from batch.ledger import InvalidTransitionError, ItemRow, Ledger
from batch.ledger.group import GroupCommit
from batch.outputs.downloads import DownloadError, Publisher, download_image
from batch.outputs.naming import OutputRecord, safe_name
from batch.pipeline.admission import Admission
from batch.pipeline.budget import Budget
from batch.pipeline.events import RunStats
from batch.pipeline.policy import RetryPolicy
from batch.pipeline.uploads import InputFileError, Uploader
from batch.pipeline.waiting import Waiter
from batch.schema import EditOutput, OutputImage

DOWNLOAD_TIMEOUT = 120.0
MAX_IMAGE_BYTES = 200 * 1024 * 1024
MIN_DOWNLOADS, MAX_DOWNLOADS = 16, 128


def download_limit(concurrency: int) -> int:
    """Downloads at once for `concurrency` fal slots: one for every two slots, 16 to 128.

    Enough downloads must run for them to keep up with the results: completions per second
    times the time a download takes (Little's law). Results come at most `concurrency` per
    service time, and a download usually takes well under half a service time. With too few,
    finished requests pile up waiting for a download while new ones keep being submitted:
    measured at concurrency 200 with zero service time, 16 downloads left 4,000 of 5,000
    results waiting behind the submits and the run took 1-2 s longer (100 did best, 64 a
    little worse). Each running download holds one image in memory, hence the ceiling.
    """
    return min(MAX_DOWNLOADS, max(MIN_DOWNLOADS, concurrency // 2))


@dataclass
class ItemContext:
    """What every item of a run shares; built once by the runner."""

    client: QueueClient
    ledger: Ledger
    admission: Admission
    waiter: Waiter
    policy: RetryPolicy
    stats: RunStats
    output_dir: Path
    filename_template: str
    downloads: asyncio.Semaphore
    writes: GroupCommit  # the ledger's group commit (intents, submits, completions)
    publisher: Publisher = field(default_factory=Publisher)
    priority: str | None = None
    start_timeout: float | None = None
    deadline: float | None = None
    webhook_url: str | None = None
    on_change: Callable[[], None] = field(default=lambda: None)
    draining: Callable[[], bool] = field(default=lambda: False)
    uploads: Uploader | None = None  # local images → URLs before each submit
    detach: bool = False  # run --detach: submit only; a webhook receiver collects the results
    budget: Budget | None = None  # budget.max_usd: may this item still be paid for?

    def progress_tick(self) -> None:
        self.on_change()


class Later(Exception):
    """The item wants another turn at `when` (a time.monotonic() value)."""

    def __init__(self, when: float) -> None:
        super().__init__(when)
        self.when = when


class Finished(Exception):
    """The item reached a final state (completed or failed) and is recorded so."""


class Slot:
    """An admission slot taken by the dispatcher, given back once (when fal is done with it)."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission.release_slot()
            self._admission = None


async def run_item(ctx: ItemContext, row: ItemRow, slot: Slot) -> float | None:
    """Take the item as far as it will go now. Returns when to come back, or None when done.

    The caller took `slot` for this item; it is given back as soon as the result is in, so the
    next request can start while this one's files download.
    """
    try:
        handle = _handle_of(ctx, row)
        fresh = handle is None
        if handle is None:
            handle = await _submit(ctx, row)
        if ctx.detach:
            return None  # `webhook serve` collects it, or a later run re-attaches
        completed = await _wait(ctx, row, handle, fresh=fresh)
        output = await _fetch_result(ctx, row, handle, completed)
        slot.release()
        # Only a request sent with a webhook may also be finalized elsewhere (by `webhook serve`
        # from fal's delivery); one that this task sent without a webhook cannot be.
        await _collect(ctx, row, output, shared=not fresh or ctx.webhook_url is not None)
    except Later as later:
        return later.when
    except (Finished, InvalidTransitionError):
        pass  # recorded; or another finalizer (`webhook serve`) moved the item on first
    finally:
        slot.release()
    return None


async def finish_item(
    ctx: ItemContext, row: ItemRow, handle: RequestHandle, completed: Completed
) -> float | None:
    """Finalize an item whose request has completed (a webhook said so): its result (the
    delivered output, or fetched), downloads, completion — as `run_item` does after waiting.
    Returns when to come back, or None when the item is done."""
    try:
        output = await _fetch_result(ctx, row, handle, completed)
        await _collect(ctx, row, output, shared=True)
    except Later as later:
        return later.when
    except (Finished, InvalidTransitionError):
        pass
    return None


def _handle_of(ctx: ItemContext, row: ItemRow) -> RequestHandle | None:
    if row.state != "submitted" or not row.request_id:
        return None
    if row.status_url and row.response_url and row.cancel_url:
        return RequestHandle(
            row.endpoint, row.request_id, row.status_url, row.response_url, row.cancel_url
        )
    return ctx.client.handle_for(row.endpoint, row.request_id)


async def _submit(ctx: ItemContext, row: ItemRow) -> RequestHandle:
    if row.attempts >= ctx.policy.attempts:
        _fail(ctx, row, "exhausted", row.error_message or "no attempts left")
    payload = await _payload(ctx, row)
    await ctx.admission.before_submit()
    if ctx.draining():
        raise Later(time.monotonic())  # stopping: nothing new is sent; the next run does it
    if ctx.budget is not None:
        ctx.writes.flush()  # the budget reads the ledger: every intent so far in it
        if not ctx.budget.admit(row):
            raise Later(time.monotonic())  # over budget: the budget stopped the run; left pending
    if row.submit_started_at is not None:
        # An earlier run sent this submit and died before recording the answer.
        _note_ambiguous(ctx, row)
    # The intent, committed before the request leaves.
    await ctx.writes.write(lambda: ctx.ledger.mark_submitting(row.key))
    ctx.stats.submits += 1
    try:
        handle = await ctx.client.submit(
            row.endpoint,
            payload,
            webhook_url=ctx.webhook_url,
            priority=ctx.priority,
            start_timeout=ctx.start_timeout,
        )
    except AmbiguousSubmitError as exc:
        # fal may have queued it, and cannot tell us its id: submit again, and say so.
        _note_ambiguous(ctx, row)
        _retry(ctx, row, exc, delay=0.0)
    except RateLimitedError as exc:
        # Not queued. Everyone slows down; the item keeps its attempt count.
        ctx.ledger.mark_submitting(row.key, sending=False)
        ctx.stats.rate_limited += 1
        wait = ctx.policy.backoff(1, exc.retry_after if exc.retry_after is not None else 1.0)
        ctx.admission.on_rate_limited(wait)
        raise Later(time.monotonic() + wait) from None
    except AuthError:
        ctx.ledger.mark_submitting(row.key, sending=False)
        raise
    except TransientError as exc:
        _retry(ctx, row, exc)
    except PermanentError as exc:
        _fail(ctx, row, exc.kind, str(exc))
    crashpoint("submit")
    await ctx.writes.write(
        lambda: ctx.ledger.mark_submitted(
            row.key,
            handle.request_id,
            handle.status_url,
            handle.response_url,
            handle.cancel_url,
        )
    )
    ctx.admission.on_accepted()
    return handle


async def _payload(ctx: ItemContext, row: ItemRow) -> dict[str, Any]:
    """What is sent: the ledger's payload with its local images uploaded (or inlined)."""
    if ctx.uploads is None:
        return row.payload
    try:
        return await ctx.uploads.prepare(row.payload)
    except InputFileError as exc:
        _fail(ctx, row, "input", str(exc))
    except AuthError:
        raise
    except (TransientError, RateLimitedError) as exc:
        _retry(ctx, row, exc, kind="upload")  # the uploader's own retries are used up
    except PermanentError as exc:
        _fail(ctx, row, "upload", str(exc))


def _note_ambiguous(ctx: ItemContext, row: ItemRow) -> None:
    ctx.stats.ambiguous += 1
    ctx.ledger.mark_ambiguous(row.key)


async def _wait(
    ctx: ItemContext, row: ItemRow, handle: RequestHandle, *, fresh: bool = False
) -> Completed:
    ctx.stats.in_flight += 1
    try:
        if ctx.deadline is None:
            return await ctx.waiter.wait(handle, fresh=fresh)
        async with asyncio.timeout(ctx.deadline):
            return await ctx.waiter.wait(handle, fresh=fresh)
    except TimeoutError:
        await _cancel_quietly(ctx, handle)
        _retry(ctx, row, TransientError(f"no result within the {ctx.deadline:g} s deadline"))
    except NotFoundError as exc:
        _retry(ctx, row, exc, kind="lost")  # fal no longer knows it: submit again
    except (TransientError, RateLimitedError):
        # Still in fal's queue as far as we know: come back to it, keep the request id.
        raise Later(time.monotonic() + ctx.policy.backoff(2)) from None
    finally:
        ctx.stats.in_flight -= 1


async def _fetch_result(
    ctx: ItemContext, row: ItemRow, handle: RequestHandle, completed: Completed
) -> EditOutput:
    try:
        body = completed.output if completed.output is not None else await ctx.client.result(handle)
    except NotFoundError as exc:
        _retry(ctx, row, exc, kind="expired")  # the result is gone: the only way is again
    except (TransientError, RateLimitedError) as exc:
        if completed.failed:
            _retry(ctx, row, exc)  # the job itself failed for a passing reason: resubmit
        raise Later(time.monotonic() + ctx.policy.backoff(2)) from None
    except PermanentError as exc:
        _fail(ctx, row, exc.kind, str(exc))
    try:
        return EditOutput.model_validate(body)
    except ValidationError as exc:
        _fail(ctx, row, "bad_output", f"result does not match the output schema: {exc}")


async def _collect(ctx: ItemContext, row: ItemRow, output: EditOutput, *, shared: bool) -> None:
    """Download the outputs and mark the item completed. `shared`: another finalizer may have
    finished the item meanwhile; then nothing is downloaded (the ledger's transition refuses a
    second completion either way, this only saves the downloads)."""
    if shared and ctx.ledger.state(row.key) != "submitted":
        raise Finished()  # finalized meanwhile by another finalizer (a webhook receiver)
    records: list[OutputRecord] = []
    for index, image in enumerate(output.images):
        records.append(await _download(ctx, row, index, image, output.seed))
    await ctx.writes.write(
        lambda: ctx.ledger.mark_completed(
            row.key,
            records,
            seed=output.seed,
            timings=dict(output.timings),
            nsfw=list(output.has_nsfw_concepts),
        )
    )
    ctx.stats.completed += 1


async def _download(
    ctx: ItemContext, row: ItemRow, index: int, image: OutputImage, seed: int | None
) -> OutputRecord:
    ext = _ext(image)
    name = safe_name(ctx.filename_template, key=row.key, index=index, ext=ext, seed=seed or 0)
    dest = ctx.output_dir / "images" / name
    session: aiohttp.ClientSession = ctx.client.session
    last: DownloadError | None = None
    for attempt in range(1, ctx.policy.download_attempts + 1):
        try:
            async with ctx.downloads:
                got = await download_image(
                    session,
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
        except DownloadError as exc:
            last = exc
            await asyncio.sleep(ctx.policy.backoff(attempt))
    # The request succeeded and is paid for: never resubmit it for a download. The item fails
    # as `download` with its request id kept, so `retry` can re-attach to it later.
    _fail(ctx, row, "download", f"download of image {index} failed: {last}")


def _ext(image: OutputImage) -> str:
    content_type = (image.content_type or "").lower()
    if "jpeg" in content_type or "jpg" in content_type:
        return "jpg"
    if "webp" in content_type:
        return "webp"
    return "png"


async def _cancel_quietly(ctx: ItemContext, handle: RequestHandle) -> None:
    with contextlib.suppress(FalError):  # best effort: the item is retried whatever the answer
        await ctx.client.cancel(handle)


def _retry(
    ctx: ItemContext,
    row: ItemRow,
    exc: FalError,
    *,
    kind: str | None = None,
    delay: float | None = None,
) -> NoReturn:
    """Back to pending for another submit (attempts permitting), or failed."""
    kind = kind or exc.kind
    current = ctx.ledger.get(row.key)
    attempts = current.attempts if current is not None else row.attempts
    if attempts >= ctx.policy.attempts:
        _fail(ctx, row, kind, f"{exc} (after {attempts} attempts)")
    wait = ctx.policy.backoff(max(attempts, 1)) if delay is None else delay
    ctx.ledger.mark_retry(row.key, kind, str(exc), time.time() + wait)
    ctx.stats.retried += 1
    raise Later(time.monotonic() + wait)


def _fail(ctx: ItemContext, row: ItemRow, kind: str, message: str) -> NoReturn:
    ctx.ledger.mark_failed(row.key, kind, message)
    ctx.stats.failed += 1
    ctx.stats.failed_by_kind[kind] += 1
    raise Finished()
