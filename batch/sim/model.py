"""The simulated model: a priority FIFO queue feeding `capacity` slots, and what a job does.

A job waits IN_QUEUE (normal priority ahead of low, FIFO within each), is started as soon as a
slot is free, validates its input with `EditInput`, fetches its inputs, renders its outputs into
the file store and takes its service time (drawn at submit time from the seeded latency
distribution, so runs are reproducible). Then it is COMPLETED with an `Outcome` and kept for
`retention_s`; expired jobs are dropped lazily, so memory stays flat over long runs (their small
`JobRecord` is kept for oracles). Stamps and retention read the model's `clock` (epoch seconds,
`time.time` unless a test gives a `ManualClock`); service times run on the event loop's clock.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import aiohttp
from pydantic import ValidationError

from batch.schema import EditInput, image_size_pixels
from batch.sim import jobs
from batch.sim.clock import Clock
from batch.sim.config import SimConfig
from batch.sim.faults import FaultRule
from batch.sim.imaging import InputImageError, fetch_input, render
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

    def __init__(self, config: SimConfig, store: FileStore, clock: Clock = time.time) -> None:
        self.config = config
        self.store = store
        self.clock = clock  # the records' stamps and retention (epoch seconds)
        self.session: aiohttp.ClientSession | None = None
        self.closing = False
        self._latency_rng = random.Random(f"{config.seed}:latency")
        self._seed_rng = random.Random(f"{config.seed}:seed")
        self._jobs: dict[str, Job] = {}
        self._records: list[JobRecord] = []
        self._normal = Lane()
        self._low = Lane()
        self._waiting: Counter[str] = Counter()
        self._done: deque[Job] = deque()
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
            service_time=self.config.latency.draw(self._latency_rng),
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
        )
        self._records.append(record)
        self._jobs[request_id] = job
        (self._low if low else self._normal).push(job)
        self._waiting[endpoint] += 1
        if start_timeout is not None:
            loop = asyncio.get_running_loop()
            job.timeout_handle = loop.call_later(start_timeout, self._start_timed_out, job)
        position = self.queue_position(job)
        self._notify_queue()
        self._dispatch()
        return job, position

    def cancel(self, job: Job) -> bool:
        """Ask a job to stop; False when it has already completed."""
        if job.state == COMPLETED:
            return False
        if job.state == IN_QUEUE:
            self._dequeue(job)
            self._complete(job, jobs.infra_error("client_cancelled"))
        elif not job.cancel_requested and job.task is not None:
            job.cancel_requested = True
            job.task.cancel()
        return True

    def forget(self, job: Job) -> None:
        """Drop a completed job now, as if its retention had passed."""
        self._jobs.pop(job.request_id, None)

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
            job.record.started_at = self.clock()
            self._busy += 1
            task = asyncio.create_task(self._execute(job), name=f"sim-job-{job.request_id}")
            job.task = task
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, job))
            self._notify_queue()

    def _complete(self, job: Job, outcome: Outcome) -> None:
        job.state = COMPLETED
        job.outcome = outcome
        job.payload = None
        job.task = None
        job.record.completed_at = self.clock()
        job.record.error_type = outcome.error_type
        job.record.result_status = outcome.status
        self._done.append(job)
        self._notify_job(job)
        if self.on_complete is not None:
            self.on_complete(job)

    def _sweep(self) -> None:
        cutoff = self.clock() - self.config.retention_s
        while self._done and (self._done[0].record.completed_at or 0.0) <= cutoff:
            self._jobs.pop(self._done.popleft().request_id, None)

    # --- running a job ----------------------------------------------------------------------

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
        self._complete(job, outcome)
        self._dispatch()

    async def _execute(self, job: Job) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + job.record.service_time
        if job.fault is not None:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            return jobs.from_fault(job.fault)
        try:
            edit = EditInput.model_validate(job.payload)
        except ValidationError as exc:
            return jobs.from_validation_error(exc)
        try:
            inputs = [
                await fetch_input(self.session, url, self.store, index=i)
                for i, url in enumerate(edit.image_urls)
            ]
            output = await self._render(job, edit, inputs)
        except InputImageError as exc:
            kind = "file_download_error" if "download" in exc.reason else "image_load_error"
            return jobs.unprocessable([jobs.detail_item(["image_urls", exc.index], str(exc), kind)])
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        return jobs.success(output)

    async def _render(self, job: Job, edit: EditInput, inputs: list[bytes]) -> dict[str, Any]:
        seed = edit.seed if edit.seed is not None else job.seed
        size = image_size_pixels(edit.image_size)
        fmt = edit.output_format
        ext, content_type = ("png", "image/png") if fmt == "png" else ("jpg", "image/jpeg")
        images: list[dict[str, Any]] = []
        for i in range(edit.num_images):
            data, width, height = await asyncio.to_thread(
                render, inputs, edit.prompt, seed, size, fmt, i
            )
            name = f"{job.request_id[:8]}_{i}.{ext}"
            key = self.store.put(data, content_type, name)
            images.append(
                {
                    "url": f"{job.base_url}/files/{key}",
                    "width": width,
                    "height": height,
                    "content_type": content_type,
                    "file_name": name,
                    "file_size": len(data),
                }
            )
        job.images = len(images)
        word = self.config.nsfw_word.lower()
        nsfw = bool(word) and word in edit.prompt.lower()
        return {
            "images": images,
            "timings": {"inference": round(job.record.service_time, 6)},
            "seed": seed,
            "has_nsfw_concepts": [nsfw] * len(images),
            "prompt": edit.prompt,
        }
