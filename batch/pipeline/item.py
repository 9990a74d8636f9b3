"""One item's way through fal: submit (or re-attach), wait, then finish (`batch.pipeline.finish`).

Every ledger write is made right where the fact becomes known, and the item does nothing else
until it is committed: the intent before a submit is sent, the request id before anything else
is awaited after a submit returns (invariant 2), and `completed` only after all its files are on
disk (invariant 1). A function here returns the time at which the item wants another turn, or
None when it is finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batch import crashpoints
from batch.fal import (
    AccountLockedError,
    AmbiguousSubmitError,
    AuthError,
    Completed,
    FalError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    RequestHandle,
    TlsError,
    TransientError,
)
from batch.fal.adapters import RENAMED, AdapterError, adapt
from batch.ledger import InvalidTransitionError, ItemRow
from batch.ledger.models import canonical_json
from batch.outputs import DiskFullError
from batch.pipeline.admission import Admission
from batch.pipeline.budget import Budget
from batch.pipeline.finish import (
    Finished,
    Finisher,
    Later,
    LeftForLater,
    collect,
    fail,
    fetch_result,
    handle_of,
    retry,
)
from batch.pipeline.recovery import Recovery, Sent, Undecided
from batch.pipeline.uploads import InputFileError, Uploader
from batch.pipeline.waiting import Waiter

Announce = Callable[[str, Mapping[str, Any] | None], Awaitable[None]]

CANCEL_FOLLOW_S = 120.0  # how long a cancelled request is followed before the next turn
WAIT_FAILURE_TURNS = 8  # turns whose wait failed transiently before an item is left for later
log = logging.getLogger("batch.run")


@dataclass(kw_only=True)
class ItemContext(Finisher):
    """What every item of a run shares: finishing, plus submitting and waiting."""

    admission: Admission
    waiter: Waiter
    priority: str | None = None
    start_timeout: float | None = None
    deadline: float | None = None
    headers: dict[str, str] = field(default_factory=dict)  # fal's platform headers
    max_queue_length: int | None = None
    on_account_locked: Callable[[AccountLockedError], None] = field(default=lambda exc: None)
    wait_failures: Counter[str] = field(default_factory=Counter)  # failed waits in a row
    on_disk_full: Callable[[DiskFullError], None] = field(default=lambda exc: None)
    webhook_url: str | None = None
    on_change: Callable[[], None] = field(default=lambda: None)
    draining: Callable[[], bool] = field(default=lambda: False)
    uploads: Uploader | None = None  # local images → URLs before each submit
    detach: bool = False  # run --detach: submit only; a webhook receiver collects the results
    budget: Budget | None = None  # budget.max_usd: may this item still be paid for?
    recovery: Recovery | None = None  # lost submit answers, looked for in fal's history
    announce: Announce | None = None  # object storage: (key, payload if uploads changed it)

    def progress_tick(self) -> None:
        self.on_change()


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
        handle = handle_of(ctx.client, row)
        fresh = False
        if handle is None:
            handle, fresh = await _submit(ctx, row)
        if ctx.detach:
            return None  # `webhook serve` collects it, or a later run re-attaches
        completed = await _wait(ctx, row, handle, fresh=fresh)
        fetched = await fetch_result(ctx, row, handle, completed)
        slot.release()
        # Only a request sent with a webhook may also be finalized elsewhere (by `webhook serve`
        # from fal's delivery); one that this task sent without a webhook cannot be.
        await collect(ctx, row, handle, fetched, shared=not fresh or ctx.webhook_url is not None)
    except Later as later:
        return later.when
    except (Finished, InvalidTransitionError):
        pass  # recorded; or another finalizer (`webhook serve`) moved the item on first
    except LeftForLater:
        ctx.stats.left += 1
    except DiskFullError as exc:
        # Nothing more can be written: the run stops admitting; this item stays as the ledger
        # has it (a request at fal stays `submitted`, to be collected by the next run).
        ctx.on_disk_full(exc)
    finally:
        slot.release()
    return None


async def _submit(ctx: ItemContext, row: ItemRow) -> tuple[RequestHandle, bool]:
    """The item's request at fal, and whether it was sent just now (False: an earlier submit
    whose answer was lost, found in fal's request history)."""
    if row.submit_started_at is not None:
        # An earlier run sent this submit and died before recording the answer: looked for
        # first (it sends nothing), so a request live at fal is never failed as exhausted.
        sent = Sent(row.key, row.endpoint, _sent_text(row), row.submit_started_at)
        found = await _recover(ctx, row, sent)
        if found is not None:
            return found, False
        await _note_ambiguous(ctx, row)
    if row.attempts >= ctx.policy.attempts:
        await fail(ctx, row, "exhausted", row.error_message or "no attempts left")
    payload = await _payload(ctx, row)
    await _admit(ctx, row)  # from here this item holds a place in the submit window
    round_trip: float | None = None  # of the submit fal accepted
    handle: RequestHandle | None = None
    lost: AmbiguousSubmitError | None = None
    token = ctx.recovery.sending(payload) if ctx.recovery is not None else None
    try:
        # The intent and what it carries, committed before the request leaves.
        sent_at = time.time()
        # (kept only when uploads changed it: otherwise it is the item's own request)
        changed = None if payload is row.payload or payload == row.payload else payload
        await ctx.writes.write(lambda: ctx.ledger.mark_submitting(row.key, payload=changed))
        crashpoints.crashpoint("intent")
        if ctx.announce is not None:
            await _announce(ctx, row, changed)
        if _turned_back(ctx, row):  # a stop came while the intent was committed
            await ctx.writes.write(lambda: ctx.ledger.mark_submitting(row.key, sending=False))
            raise Later(time.monotonic())
        if ctx.budget is not None:
            ctx.budget.sending(row.key)
        ctx.stats.submits += 1
        began = time.monotonic()
        try:
            handle = await _send(ctx, row, payload)
        except AmbiguousSubmitError as exc:
            lost = exc
        else:
            round_trip = time.monotonic() - began
    finally:
        ctx.admission.window.release(round_trip)
        if ctx.recovery is not None and token is not None:
            ctx.recovery.answered(token, None if handle is None else handle.request_id)
    if handle is None:
        assert lost is not None  # every other way out of `_send` raised
        # fal may have queued it, and cannot tell us its id: look for it in fal's history,
        # and only if it is not there submit again, and say so.
        sent_text = canonical_json(payload)
        found = await _recover(ctx, row, Sent(row.key, row.endpoint, sent_text, sent_at))
        if found is not None:
            return found, False
        await _note_ambiguous(ctx, row)
        await retry(ctx, row, lost, delay=0.0)
    crashpoints.crashpoint("submit")
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
    return handle, True


async def _announce(ctx: ItemContext, row: ItemRow, changed: Mapping[str, Any] | None) -> None:
    """The shard's journal names the submit before it leaves (`batch.pipeline.mirror`); one
    that cannot be written holds the submit back (another attempt later)."""
    assert ctx.announce is not None
    try:
        await ctx.announce(row.key, changed)
    except TransientError as exc:
        await retry(ctx, row, exc)


def _sent_text(row: ItemRow) -> str:
    """What the crashed run sent (its uploaded form), as the ledger kept it; the item's own
    request when it kept none (nothing was uploaded) or what it kept is not a JSON object."""
    if row.sent_payload is not None:
        try:
            if isinstance(json.loads(row.sent_payload), dict):
                return row.sent_payload
        except ValueError:
            pass
    return row.request


async def _recover(ctx: ItemContext, row: ItemRow, sent: Sent) -> RequestHandle | None:
    """The lost submit's request, found in fal's history and recorded; None: send again."""
    if ctx.recovery is None:
        return None
    try:
        request_id = await ctx.recovery.find(sent)
    except Undecided as exc:
        if ctx.draining():
            raise Later(time.monotonic()) from None  # stopping: the next run looks again
        log.warning("item %s: its lost submit is left for a later run: %s", row.key, exc)
        raise LeftForLater() from None  # never sent again on a guess
    if request_id is None:
        return None
    ctx.writes.flush()  # every request id recorded so far is in the ledger
    owner = ctx.ledger.request_owner(request_id)
    if owner is not None and owner != row.key:  # never one request for two items
        log.error("item %s: request %s found in fal's history is %s's", row.key, request_id, owner)
        return None
    handle = ctx.client.handle_for(row.endpoint, request_id)
    await ctx.writes.write(
        lambda: ctx.ledger.mark_submitted(
            row.key,
            request_id,
            handle.status_url,
            handle.response_url,
            handle.cancel_url,
            recovered=True,
        )
    )
    ctx.stats.recovered += 1
    log.info("item %s: its lost submit found in fal's history as request %s", row.key, request_id)
    return handle


async def _send(ctx: ItemContext, row: ItemRow, payload: dict[str, Any]) -> RequestHandle:
    """The submit itself; an error answer becomes the item's next state. A lost answer
    (`AmbiguousSubmitError`) is the caller's."""
    try:
        return await ctx.client.submit(
            row.endpoint,
            payload,
            webhook_url=ctx.webhook_url,
            priority=ctx.priority,
            start_timeout=ctx.start_timeout,
            headers=ctx.headers,
            max_queue_length=ctx.max_queue_length,
        )
    except AmbiguousSubmitError:
        raise
    except RateLimitedError as exc:
        # Not queued. Everyone slows down; the item keeps its attempt count.
        await ctx.writes.write(lambda: ctx.ledger.mark_submitting(row.key, sending=False))
        ctx.stats.rate_limited += 1
        wait = ctx.policy.backoff(1, exc.retry_after if exc.retry_after is not None else 1.0)
        ctx.admission.on_rate_limited(wait)
        raise Later(time.monotonic() + wait) from None
    except AccountLockedError as exc:
        # Not queued, and nothing new will be until the account is topped up: the run stops
        # admitting and collects what is running; the item waits, its attempt not counted.
        await ctx.writes.write(lambda: ctx.ledger.mark_submitting(row.key, sending=False))
        ctx.on_account_locked(exc)
        raise Later(time.monotonic()) from None
    except (AuthError, TlsError):
        await ctx.writes.write(lambda: ctx.ledger.mark_submitting(row.key, sending=False))
        raise
    except TransientError as exc:
        await retry(ctx, row, exc)
    except PermanentError as exc:
        await fail(ctx, row, exc.kind, str(exc), error_type=exc.error_type)


def _turned_back(ctx: ItemContext, row: ItemRow) -> bool:
    """A stop that came while this item waited turns it back (its budget hold released),
    unless it was the budget's own: the budget admitted this item and refuses only later ones.
    """
    if not ctx.draining() or (ctx.budget is not None and ctx.budget.stopped):
        return False
    if ctx.budget is not None:
        ctx.budget.release(row.key)
    return True


async def _admit(ctx: ItemContext, row: ItemRow) -> None:
    """The gate before a submit, in this order: not stopping, within the budget, the submit
    rate, a place in the window of submits on the wire (`batch.pipeline.window`; the caller
    gives it back). The in-flight slot was taken by the dispatcher before the item's turn began:
    it bounds re-attached items too. A stop or a refusal leaves the item pending."""
    if ctx.draining():
        raise Later(time.monotonic())
    if ctx.budget is not None:
        ctx.writes.flush()  # the budget reads the ledger: every transition so far in it
        if not ctx.budget.admit(row):
            raise Later(time.monotonic())  # over budget: the budget stopped the run
    await ctx.admission.before_submit()
    if _turned_back(ctx, row):
        raise Later(time.monotonic())
    await ctx.admission.window.acquire()
    if _turned_back(ctx, row):
        ctx.admission.window.release(None)
        raise Later(time.monotonic())


async def _payload(ctx: ItemContext, row: ItemRow) -> dict[str, Any]:
    """What is sent: the payload, local images uploaded, in its endpoint's fields (adapters)."""
    try:
        prepared = row.payload if ctx.uploads is None else await ctx.uploads.prepare(row.payload)
        return adapt(row.endpoint, prepared) if row.endpoint in RENAMED else prepared
    except (InputFileError, AdapterError) as exc:
        await fail(ctx, row, "input", str(exc))
    except AuthError:
        raise
    except (TransientError, RateLimitedError) as exc:
        await retry(ctx, row, exc, kind="upload")  # the uploader's own retries are used up
    except PermanentError as exc:
        await fail(ctx, row, "upload", str(exc), error_type=exc.error_type)


async def _note_ambiguous(ctx: ItemContext, row: ItemRow) -> None:
    ctx.stats.ambiguous += 1
    await ctx.writes.write(lambda: ctx.ledger.mark_ambiguous(row.key))


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
        return await _after_deadline(ctx, row, handle)
    except NotFoundError as exc:
        await retry(ctx, row, exc, kind="lost")  # fal no longer knows it: submit again
    except (TransientError, RateLimitedError) as exc:
        # Still in fal's queue as far as we know: come back to it, keep the request id (it may
        # still run, so it is never sent again) — up to a limit, then leave it for a later run.
        ctx.stats.wait_failures += 1
        ctx.wait_failures[row.key] += 1
        if ctx.wait_failures[row.key] >= WAIT_FAILURE_TURNS:
            log.warning("item %s: no answer about request %s (%s)", row.key, handle.request_id, exc)
            raise LeftForLater() from None
        raise Later(time.monotonic() + ctx.policy.backoff(ctx.wait_failures[row.key])) from None
    finally:
        ctx.stats.in_flight -= 1


async def _after_deadline(ctx: ItemContext, row: ItemRow, handle: RequestHandle) -> Completed:
    """The item's deadline passed: cancel its request, then follow it to its end.

    On fal a cancel only signals a running request; it may still finish, and is then billed.
    So the item is sent again only once fal says the request did not succeed; if it completed
    anyway, its (paid) result is used. Until fal says either, the item stays `submitted`:
    another turn asks again, and its budget hold stays."""
    assert ctx.deadline is not None
    ctx.stats.cancelled += 1
    with contextlib.suppress(FalError):  # best effort: the status says what happened
        await ctx.client.cancel(handle)
    try:
        async with asyncio.timeout(max(ctx.deadline, CANCEL_FOLLOW_S)):
            completed = await ctx.waiter.wait(handle)
    except TimeoutError:
        raise Later(time.monotonic()) from None  # still running: look again next turn
    except NotFoundError as exc:
        await retry(ctx, row, exc, kind="lost")
    except (TransientError, RateLimitedError):
        raise Later(time.monotonic() + ctx.policy.backoff(2)) from None
    if completed.failed:  # cancelled (or failed): known not to have succeeded
        why = f"no result within the {ctx.deadline:g} s deadline; cancelled"
        await retry(ctx, row, TransientError(why))
    ctx.stats.completed_after_cancel += 1
    return completed
