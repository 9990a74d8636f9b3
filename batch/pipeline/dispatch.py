"""The dispatcher: feeds items from the ledger to item tasks under the admission limits.

Work comes from the ledger in key order, in batches; items that asked for another turn wait in
a heap until their time. Only items being worked on have a task (never one per item of the
run), and a task ends with its item's turn. Stopping once stops admitting and drains; stopping
twice (or the drain bound) cancels what is left, which stays `submitted` in the ledger for the
next run to re-attach.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import time
from collections import Counter

from batch.fal import AuthError
from batch.ledger import ItemRow
from batch.pipeline.finish import record_failure
from batch.pipeline.item import ItemContext, Slot, run_item
from batch.pipeline.race import first_of

log = logging.getLogger("batch.run")

MAX_TURNS = 60  # turns one item may take in a run before it is failed as stuck


class StopSignal:
    """Ctrl-C semantics: the first request drains, the second cancels."""

    def __init__(self) -> None:
        self.draining = asyncio.Event()
        self.abort = asyncio.Event()
        self.reason = ""

    def request(self, reason: str = "interrupted") -> None:
        """Say at once what happens: a drain can take a while."""
        if self.draining.is_set():
            if not self.abort.is_set():
                log.warning(
                    "%s again: stopping now; requests in flight stay submitted for the next run",
                    reason,
                )
            self.abort.set()
        else:
            self.reason = reason
            log.warning(
                "%s: no new submits; waiting for requests in flight to finish"
                " (Ctrl-C again to stop at once)",
                reason,
            )
            self.draining.set()


class Dispatcher:
    def __init__(
        self, ctx: ItemContext, stop: StopSignal, drain_timeout: float = 60.0, pilot: bool = False
    ) -> None:
        self.ctx = ctx
        self.pilot = pilot  # a pilot run: only its sample is sent
        self.stop = stop
        self.drain_timeout = drain_timeout
        self.fatal: BaseException | None = None
        self._tasks: set[asyncio.Task[float | None]] = set()
        self._later: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._turns: Counter[str] = Counter()
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"Dispatcher(tasks={len(self._tasks)}, later={len(self._later)})"

    async def run(self) -> None:
        work = self.ctx.ledger.iter_work(pilot=self.pilot)
        exhausted = False
        while not self.stop.draining.is_set() and self.fatal is None:
            row = self._due_row()
            if row is None and not exhausted:
                row = next(work, None)
                exhausted = row is None
            if row is None:
                if exhausted and not self._later and not self._tasks:
                    break
                await self._idle()
                continue
            await self._dispatch(row)
        await self._finish()

    def _due_row(self) -> ItemRow | None:
        if self._later and self._later[0][0] <= time.monotonic():
            _, _, key = heapq.heappop(self._later)
            return self.ctx.ledger.get(key)
        return None

    async def _dispatch(self, row: ItemRow) -> None:
        if row.state not in ("pending", "submitted"):
            return
        delay = (row.not_before or 0.0) - time.time()
        if delay > 0 and row.state == "pending":
            self._push(time.monotonic() + delay, row.key)
            return
        self._turns[row.key] += 1
        if self._turns[row.key] > MAX_TURNS:
            await record_failure(self.ctx, row.key, "stuck", f"no progress after {MAX_TURNS} turns")
            return
        if not await self._take_slot():
            self._push(time.monotonic(), row.key)  # stopping: left for the next run
            return
        task = asyncio.create_task(run_item(self.ctx, row, Slot(self.ctx.admission)))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._done, key=row.key))

    async def _take_slot(self) -> bool:
        """Take an admission slot, or False when a stop came first (no slot is kept)."""
        if self.ctx.admission.has_room():  # the common case: no waiting, so nothing to race
            await self.ctx.admission.acquire_slot()
            try:
                await asyncio.sleep(0)  # one item per turn of the loop: submits go out paced
            except asyncio.CancelledError:
                self.ctx.admission.release_slot()
                raise
        else:
            acquire = asyncio.ensure_future(self.ctx.admission.acquire_slot())
            await first_of(acquire, self.stop.draining.wait())
            if acquire.cancelled():
                return False
        if self.stop.draining.is_set():
            self.ctx.admission.release_slot()
            return False
        return True

    def _done(self, task: asyncio.Task[float | None], *, key: str) -> None:
        self._tasks.discard(task)
        self._wake.set()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            if not isinstance(exc, AuthError):
                log.error("item %s: unexpected error: %r", key, exc)  # traceback: crash log
            self.fatal = self.fatal or exc
            self.stop.request("fatal")
            return
        when = task.result()
        if when is not None:
            self._push(when, key)
        self.ctx.progress_tick()

    def _push(self, when: float, key: str) -> None:
        heapq.heappush(self._later, (when, next(self._seq), key))

    async def _idle(self) -> None:
        """Sleep until a task ends, a retry is due, or a stop is requested."""
        timeout = None
        if self._later:
            timeout = max(0.0, self._later[0][0] - time.monotonic())
        self._wake.clear()
        await first_of(self._wake.wait(), self.stop.draining.wait(), timeout=timeout)

    async def _finish(self) -> None:
        """Drain what is in flight (bounded), then cancel whatever is left."""
        if self._tasks and self.fatal is None:
            await first_of(
                self.stop.abort.wait(), asyncio.wait(set(self._tasks)), timeout=self.drain_timeout
            )
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
