"""The simulated model: a priority FIFO queue feeding `capacity` slots, and what a job does.

A job waits IN_QUEUE (normal priority ahead of low, FIFO within each), is started as soon as a
slot is free, validates its input with `EditInput` (on the `validated_endpoints`; elsewhere a
valid edit is rendered and anything else passed through), fetches its inputs, renders its
outputs into the file store and takes its service time (drawn at submit time from the seeded
latency distribution, so runs are reproducible); that attempt is `worker.py`'s. Then it is
COMPLETED with an `Outcome`, billed (`billing.py`) and kept for its retention (30 days with
payload storage, 1 h / 6 min without); expired jobs are dropped lazily (their small `JobRecord`
is kept for oracles). Stamps, retention and file lifetimes read the model's `clock` (epoch
seconds, `time.time` unless a test gives a `ManualClock`); service times run on the event
loop's clock.

fal's own retries (§10): an attempt that fails transiently (the `server_retry` fault, or an
attempt longer than `app_request_timeout_s`) sends the job back IN_QUEUE, at the back of its
lane, with a new gateway request id, up to `max_server_attempts` attempts (one with
`X-Fal-No-Retry`); its start deadline keeps running meanwhile.

Cancel: an IN_QUEUE job is removed (499 `client_cancelled`, never run). An IN_PROGRESS job is
signalled only (`cancel_mode: signal`, fal's behaviour: it runs on, completes and is billed),
or stopped (`cancel_mode: abort`: 499, unbilled).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import heapq
import itertools
import logging
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import aiohttp

from batch.sim import jobs, worker
from batch.sim.billing import Billing
from batch.sim.clock import Clock
from batch.sim.config import SimConfig
from batch.sim.counters import Counters
from batch.sim.faults import FaultRule
from batch.sim.jobs import COMPLETED, IN_PROGRESS, IN_QUEUE, Job, JobRecord, Outcome
from batch.sim.storage import FileStore

MAX_SEED = 2**32 - 1
log = logging.getLogger(__name__)


class Lane:
    """A FIFO with removal from the middle and O(log n) "how many are ahead of this job"."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self._next_seq = 0
        self._popped = 0  # jobs ever taken off the head, so the head's seq equals this
        self._removed: list[int] = []  # sorted seqs of removed jobs still in the deque

    def __len__(self) -> int:
        return len(self._jobs) - len(self._removed)

    def push(self, job: Job) -> None:
        job.seq = self._next_seq
        self._next_seq += 1
        self._jobs.append(job)

    def pop(self) -> Job | None:
        while self._jobs:
            job = self._jobs.popleft()
            self._popped += 1
            if not job.removed:
                return job
            self._removed.pop(0)
        return None

    def remove(self, job: Job) -> None:
        job.removed = True
        bisect.insort(self._removed, job.seq)

    def ahead(self, job: Job) -> int:
        return job.seq - self._popped - bisect.bisect_left(self._removed, job.seq)


class Model:
    """The queue, the slots and every live job of one simulator."""

    def __init__(
        self,
        config: SimConfig,
        store: FileStore,
        clock: Clock = time.time,
        *,
        counters: Counters | None = None,
        billing: Billing | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock  # the records' stamps and retention (epoch seconds)
        self.counters = counters if counters is not None else Counters()
        self.billing = billing if billing is not None else Billing(config, self.counters)
        self.session: aiohttp.ClientSession | None = None
        self.closing = False
        self._latency_rng = random.Random(f"{config.seed}:latency")
        self._seed_rng = random.Random(f"{config.seed}:seed")
        self._jobs: dict[str, Job] = {}
        self._records: list[JobRecord] = []
        self._normal = Lane()
        self._low = Lane()
        self._waiting: Counter[str] = Counter()
        self._done: list[tuple[float, int, Job]] = []  # heap: (result expiry, tie-break, job)
        self._done_seq = itertools.count()
        self._tasks: set[asyncio.Task[Outcome]] = set()
        self._busy = 0
        self._queue_event = asyncio.Event()
        self.on_complete: Callable[[Job], None] | None = None  # e.g. the webhook sender

    def __repr__(self) -> str:
        return (
            f"Model(capacity={self.config.capacity}, busy={self._busy}, "
            f"waiting={len(self._normal) + len(self._low)}, live={len(self._jobs)})"
        )

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Stop picking jobs, cancel running ones and wake every waiter."""
        self.closing = True
        for job in self._jobs.values():
            if job.timeout_handle is not None:
                job.timeout_handle.cancel()
            self._notify_job(job)
        self._notify_queue()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    # --- reading ----------------------------------------------------------------------------

    @property
    def records(self) -> list[JobRecord]:
        return list(self._records)

    def get(self, request_id: str) -> Job | None:
        self._sweep()
        return self._jobs.get(request_id)

    def queue_position(self, job: Job) -> int:
        if not job.low:
            return self._normal.ahead(job)
        return len(self._normal) + self._low.ahead(job)

    def waiting(self, endpoint: str) -> int:
        return self._waiting[endpoint]

    def changed(self, job: Job) -> asyncio.Event:
        """An event set at the job's next change (or the queue's, while it waits)."""
        if job.state == IN_QUEUE:
            return self._queue_event
        if job.event is None:
            job.event = asyncio.Event()
        return job.event

    # --- requests ---------------------------------------------------------------------------

    def submit(
        self,
        *,
        endpoint: str,
        root: str,
        payload: dict[str, Any],
        digest: str,
        base_url: str,
        low: bool = False,
        start_timeout: float | None = None,
        webhook: str | None = None,
        fault: FaultRule | None = None,
        retry_fault: FaultRule | None = None,
        slowdown: float = 1.0,
        no_retry: bool = False,
        store_io: bool = True,
        media_ttl_s: float | None = None,
        sent: dict[str, str] | None = None,
    ) -> tuple[Job, int]:
        """Enqueue a job; returns it and its queue position at submit time."""
        self._sweep()
        request_id = str(uuid.uuid4())
        record = JobRecord(
            request_id=request_id,
            endpoint=endpoint,
            payload_hash=digest,
            priority="low" if low else "normal",
            submitted_at=self.clock(),
            service_time=self.config.latency.draw(self._latency_rng) * slowdown,
            gateway_request_ids=[request_id],
            sent=dict(sent or {}),
        )
        job = Job(
            record=record,
            root=root,
            base_url=base_url,
            payload=payload,
            seed=self._seed_rng.randint(0, MAX_SEED),
            low=low,
            webhook=webhook,
            fault=fault,
            retry_fault=retry_fault,
            no_retry=no_retry,
            store_io=store_io,
            media_ttl_s=media_ttl_s,
        )
        self._records.append(record)
        self._jobs[request_id] = job
        (self._low if low else self._normal).push(job)
        self._waiting[endpoint] += 1
        if start_timeout is not None:
            loop = asyncio.get_running_loop()
            job.start_deadline = loop.time() + start_timeout
            job.timeout_handle = loop.call_later(start_timeout, self._start_timed_out, job)
        position = self.queue_position(job)
        self._notify_queue()
        self._dispatch()
        return job, position

    def cancel(self, job: Job) -> bool:
        """Ask a job to stop; False when it has already completed.

        IN_QUEUE: removed at once. IN_PROGRESS: signalled (`cancel_mode: signal`; it runs on)
        or stopped (`abort`)."""
        if job.state == COMPLETED:
            return False
        job.record.cancel_requested = True
        if job.state == IN_QUEUE:
            self._dequeue(job)
            self._complete(job, jobs.infra_error("client_cancelled"))
        elif not job.cancel_requested:
            job.cancel_requested = True
            if self.config.cancel_mode == "abort" and job.task is not None:
                job.task.cancel()
            else:
                self.counters.cancel_signals += 1
        return True

    def forget(self, job: Job) -> None:
        """Drop a completed job now, as if its retention had passed."""
        self._jobs.pop(job.request_id, None)

    def renew_media(self, job: Job) -> int:
        """`media_renew_on_result`: make the job's expired output files downloadable again for
        their lifetime; returns how many were renewed."""
        renewed = 0
        for key in job.output_keys:
            if self.store.get(key) is None and self.store.renew(key, self._media_expiry(job)):
                renewed += 1
        return renewed

    def _media_expiry(self, job: Job) -> float | None:
        return worker.media_expiry(job, self.clock)

    # --- the queue --------------------------------------------------------------------------

    def _notify_queue(self) -> None:
        event, self._queue_event = self._queue_event, asyncio.Event()
        event.set()

    @staticmethod
    def _notify_job(job: Job) -> None:
        if job.event is not None:
            job.event.set()
            job.event = None

    def _dequeue(self, job: Job) -> None:
        (self._low if job.low else self._normal).remove(job)
        self._waiting[job.record.endpoint] -= 1
        if job.timeout_handle is not None:
            job.timeout_handle.cancel()
            job.timeout_handle = None
        self._notify_queue()

    def _start_timed_out(self, job: Job) -> None:
        job.timeout_handle = None
        if job.state == IN_QUEUE and not self.closing:
            self._dequeue(job)
            self._complete(job, jobs.infra_error("startup_timeout"))

    def _requeue(self, job: Job) -> bool:
        """fal's server-side retry of a failed attempt: back IN_QUEUE with a new gateway id.
        False when the attempt's failure is final (no retries left, X-Fal-No-Retry, or a
        cancel was requested)."""
        if (
            job.no_retry
            or job.cancel_requested
            or job.record.attempts >= self.config.max_server_attempts
        ):
            return False
        if job.start_deadline is not None:
            loop = asyncio.get_running_loop()
            remaining = job.start_deadline - loop.time()
            if remaining <= 0:  # the start deadline covers failed attempts too
                self._complete(job, jobs.infra_error("startup_timeout"))
                return True
            job.timeout_handle = loop.call_later(remaining, self._start_timed_out, job)
        self.counters.server_retries += 1
        job.record.gateway_request_ids.append(str(uuid.uuid4()))
        job.state = IN_QUEUE
        job.task = None
        (self._low if job.low else self._normal).push(job)
        self._waiting[job.record.endpoint] += 1
        self._notify_job(job)
        self._notify_queue()
        return True

    def _dispatch(self) -> None:
        while not self.closing and self._busy < self.config.capacity:
            job = self._normal.pop() or self._low.pop()
            if job is None:
                return
            self._waiting[job.record.endpoint] -= 1
            if job.timeout_handle is not None:
                job.timeout_handle.cancel()
                job.timeout_handle = None
            job.state = IN_PROGRESS
            job.record.attempts += 1
            job.record.started_at = self.clock()
            self._busy += 1
            attempt = worker.execute(
                job, config=self.config, store=self.store, clock=self.clock, session=self.session
            )
            task = asyncio.create_task(attempt, name=f"sim-job-{job.request_id}")
            job.task = task
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, job))
            self._notify_queue()

    def _complete(self, job: Job, outcome: Outcome) -> None:
        now = self.clock()
        job.state = COMPLETED
        job.outcome = outcome
        job.payload = None
        job.task = None
        job.record.completed_at = now
        job.record.error_type = outcome.error_type
        job.record.result_status = outcome.status
        self.billing.charge(job)
        job.expires_at = now + self._retention(job, outcome)
        heapq.heappush(self._done, (job.expires_at, next(self._done_seq), job))
        self._notify_job(job)
        if self.on_complete is not None:
            self.on_complete(job)

    def _retention(self, job: Job, outcome: Outcome) -> float:
        """How long the result stays fetchable (§3): the payload storage period, or without
        payload storage 1 h (6 min for a result of 10 KB or more)."""
        config = self.config
        if job.store_io:
            return config.payload_retention_s
        if len(outcome.body) >= jobs.STORE_IO_LIMIT:
            return min(config.retention_s, config.large_result_retention_s)
        return config.retention_s

    def _sweep(self) -> None:
        now = self.clock()
        while self._done and self._done[0][0] <= now:
            job = heapq.heappop(self._done)[2]
            self._jobs.pop(job.request_id, None)
            if self.config.media_renew_on_result:  # pinned outputs live as long as the result
                for key in job.output_keys:
                    self.store.delete(key)

    # --- a job's attempts (what an attempt does is worker.py's) -----------------------------

    def _finished(self, job: Job, task: asyncio.Task[Outcome]) -> None:
        """Done callback of a job's task: free the slot, complete the job, start the next."""
        self._tasks.discard(task)
        self._busy -= 1
        exc = None if task.cancelled() else task.exception()
        if self.closing:
            return
        if task.cancelled():
            outcome = jobs.infra_error("client_cancelled")
        elif exc is not None:  # a simulator bug: fail this job, keep the slot, say so
            log.error("job %s failed inside the simulator", job.request_id, exc_info=exc)
            outcome = jobs.infra_error("internal_error", f"Internal error: {exc!r}")
        else:
            outcome = task.result()
        if not (outcome.retry and self._requeue(job)):
            self._complete(job, outcome)
        self._dispatch()
