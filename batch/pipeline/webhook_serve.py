"""`firered-batch webhook serve JOB`: the long-running receiver of a job's webhooks.

A detached run (`run --detach`) submits every item with `fal_webhook=<webhook.public_url>` and
exits; this receiver, bound to the job's ledger, verifies each delivery (`batch.fal.webhooks`)
and finalizes its item in the background — the delivered output downloaded and checked exactly
as a polled one (`finish_item`), the item marked completed — then acknowledges at once, so fal
never waits on a download. Finalization is single-flight per item (a claim set) and guarded by
the ledger's state (an item is completed once, whoever gets there first: this receiver, a
duplicate delivery, or a `run` re-attaching by polling at the same time).

What is left `submitted` (a lost webhook, a failed download, the receiver down longer than
fal's retry schedule) is collected by the next `run`, which re-attaches by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from batch.fal import AuthError, Completed, Credentials, QueueClient, credentials_from_env
from batch.fal.webhooks import JwksCache, WebhookDelivery, WebhookReceiver
from batch.job import JobError, JobSpec
from batch.ledger import LEDGER_FILE, ItemRow, Ledger
from batch.ledger.group import GroupCommit
from batch.pipeline.events import RunStats
from batch.pipeline.finish import Finisher, download_limit, finish_item, handle_of
from batch.pipeline.policy import RetryPolicy
from batch.pipeline.race import first_of

log = logging.getLogger("batch.webhooks")

CHECK_INTERVAL_S = 0.5  # how often `until_done` looks at the ledger (another run may finish)


class Collector:
    """Verified deliveries in; each item finalized once, in the background.

    `stats`: `received` (a finalization started), `ignored` (unknown by now, not submitted any
    more, or already being finalized: duplicates), `left` (left submitted for a later run),
    `errors`.
    """

    def __init__(self, ctx: Finisher) -> None:
        self.ctx = ctx
        self.stats: Counter[str] = Counter()
        self.changed = asyncio.Event()
        self._claimed: set[str] = set()  # item keys being finalized
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Collector(busy={len(self._tasks)}, stats={dict(self.stats)})"

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def accepts(self, request_id: str) -> bool:
        return self.ctx.ledger.find_request(request_id) is not None

    async def on_delivery(self, delivery: WebhookDelivery) -> bool:
        row = self.ctx.ledger.find_request(delivery.request_id)
        if row is None or row.state != "submitted" or row.key in self._claimed:
            self.stats["ignored"] += 1
            return True  # acknowledged: fal stops retrying a duplicate
        self._claimed.add(row.key)
        self.stats["received"] += 1
        task = asyncio.create_task(self._finalize(row, delivery), name=f"webhook-{row.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _finalize(self, row: ItemRow, delivery: WebhookDelivery) -> None:
        try:
            handle = handle_of(self.ctx.client, row)
            assert handle is not None  # a submitted row with a request id
            completed = delivery.completed()
            if completed.failed:
                # Acted on only once the queue confirms the request ended (see `Waiter.wait`).
                status = await self.ctx.client.status(handle)
                if not isinstance(status, Completed):
                    self.stats["unconfirmed"] += 1
                    log.warning(
                        "item %s: an ERROR webhook for a request fal still runs; ignored", row.key
                    )
                    return
                completed = status
            again = await finish_item(self.ctx, row, handle, completed)
            if again is not None:
                self.stats["left"] += 1
                log.info("item %s left for a later run (its result could not be fetched)", row.key)
        except AuthError as exc:
            self.stats["errors"] += 1
            log.error("item %s: refused by fal: %s", row.key, exc)
        except Exception:
            self.stats["errors"] += 1
            log.exception("item %s: finalizing failed; a later run re-attaches to it", row.key)
        finally:
            self._claimed.discard(row.key)
            self.changed.set()

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


@dataclass
class ServeSummary:
    url: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)  # the collector's
    receiver: dict[str, int] = field(default_factory=dict)  # accepted, rejected:<reason>, ...
    completed: int = 0
    failed: int = 0
    wall_time: float = 0.0

    def text(self) -> str:
        rejected = sum(n for k, n in self.receiver.items() if k.startswith("rejected:"))
        return (
            f"webhook receiver on {self.url}: {self.completed} completed, {self.failed} failed, "
            f"{self.stats.get('ignored', 0)} duplicates or late deliveries ignored, "
            f"{rejected} rejected; ledger now: {self.counts.get('completed', 0)} completed, "
            f"{self.counts.get('submitted', 0)} submitted, {self.counts.get('pending', 0)} "
            f"pending, {self.counts.get('failed', 0)} failed ({self.wall_time:.1f} s)"
        )


class WebhookService:
    """The receiver bound to a job's ledger, while the `async with` block runs.

    async with WebhookService(spec) as service:
        service.url, service.collector, service.receiver, service.ledger
    """

    def __init__(
        self,
        spec: JobSpec,
        *,
        credentials: Credentials | None = None,
        policy: RetryPolicy | None = None,
        **receiver_options: Any,
    ) -> None:
        """`receiver_options` go to `WebhookReceiver` (max_body_bytes, tolerance, clock)."""
        if spec.local:
            raise JobError(["webhook serve: needs a remote queue (queue: local ends with its run)"])
        if not (spec.output / LEDGER_FILE).exists():
            raise JobError([f"{spec.output}: no ledger yet (run the job with --detach first)"])
        self.spec = spec
        self.policy = policy or RetryPolicy.from_spec(spec.retries)
        self._credentials = credentials
        self._receiver_options = receiver_options
        self._stack = contextlib.AsyncExitStack()
        self.url = ""
        self._counts: dict[str, int] | None = None

    async def __aenter__(self) -> WebhookService:
        async with contextlib.AsyncExitStack() as stack:
            self.ledger = stack.enter_context(Ledger.open(self.spec.output, create=False))
            stack.enter_context(self.ledger.background_checkpoints())
            client = await stack.enter_async_context(
                QueueClient(
                    base_url=self.spec.queue,
                    credentials=self._credentials or credentials_from_env(),
                    # room for every download and as many result fetches beside them
                    max_connections=max(100, 2 * download_limit(self.spec.concurrency)),
                )
            )
            self.ctx = Finisher(
                client=client,
                ledger=self.ledger,
                policy=self.policy,
                stats=RunStats(),
                output_dir=self.spec.output,
                filename_template=self.spec.filename,
                downloads=asyncio.Semaphore(download_limit(self.spec.concurrency)),
                writes=GroupCommit(self.ledger),
            )
            self.collector = Collector(self.ctx)
            self.receiver = WebhookReceiver(
                JwksCache.from_url(client.session, self.spec.webhook.jwks_url),
                accepts=self.collector.accepts,
                on_delivery=self.collector.on_delivery,
                **self._receiver_options,
            )
            hook = self.spec.webhook
            self.url = await self.receiver.start(hook.host, hook.port)
            stack.push_async_callback(self._close)
            self._stack = stack.pop_all()
        log.info("webhook receiver for %s listening on %s", self.spec.name, self.url)
        return self

    async def _close(self) -> None:
        await self.receiver.stop()
        await self.collector.drain()
        await self.ctx.aclose()
        self.ledger.export(self.spec.output)
        self._counts = self.ledger.counts()  # the ledger closes next

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stack.aclose()

    def summary(self) -> ServeSummary:
        return ServeSummary(
            url=self.url,
            counts=self._counts if self._counts is not None else self.ledger.counts(),
            stats=dict(self.collector.stats),
            receiver=dict(self.receiver.stats),
            completed=self.ctx.stats.completed,
            failed=self.ctx.stats.failed,
        )


async def serve_webhooks(
    spec: JobSpec,
    *,
    until_done: bool = False,
    stop: asyncio.Event | None = None,
    handle_signals: bool = False,
    on_ready: Callable[[str], None] = lambda url: None,
    **options: Any,
) -> ServeSummary:
    """Receive the job's webhooks on `webhook.listen` until `stop` is set (Ctrl-C with
    `handle_signals`) or, with `until_done`, no item is `submitted` any more. The fal key
    (`credentials`, else the environment) is needed for results a webhook does not carry
    (`payload_error`, failures). Raises JobError for a local queue or a job not run yet;
    `options` go to `WebhookService`."""
    started = time.monotonic()
    stop = stop or asyncio.Event()
    with _signals(stop, handle_signals):
        async with WebhookService(spec, **options) as service:
            on_ready(service.url)
            await _serve_until(stop, until_done, service.ledger, service.collector)
    summary = service.summary()
    summary.wall_time = time.monotonic() - started
    return summary


async def _serve_until(
    stop: asyncio.Event, until_done: bool, ledger: Ledger, collector: Collector
) -> None:
    while not stop.is_set():
        if until_done and not collector.busy and ledger.counts()["submitted"] == 0:
            return
        collector.changed.clear()
        await first_of(stop.wait(), collector.changed.wait(), timeout=CHECK_INTERVAL_S)


@contextlib.contextmanager
def _signals(stop: asyncio.Event, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
