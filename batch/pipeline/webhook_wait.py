"""`wait: webhook`: results pushed by fal to this run's receiver, with a safety-net poll.

Every submit carries `fal_webhook=<public URL>`. The run serves a `WebhookReceiver`
(`batch.fal.webhooks`: headers, timestamp window, body cap, Ed25519 signature under the JWKS)
whose deliveries land in `WebhookWaits`; an item's waiter takes its delivery from there, so the
item's own task does the downloads and the completion — the receiver never touches the ledger,
and an item is finalized once whatever arrives (webhook, duplicate, poll).

The safety net: an item whose webhook has not come within `timeout()` seconds is polled
(adaptive, as in poll mode) while its webhook may still win the race. The timeout is the larger
of `webhook.safety_net` and 1.5 × the p95 of the times observed from submit to webhook; before
any webhook has come, 1.5 × the service time the polls observed (or 6 × `safety_net` before
anything is known). The times of results found by polling are not used: they measure the timeout
itself. A lost webhook therefore costs a few polls, never a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator

from batch.fal import Completed, QueueClient, RequestHandle
from batch.fal.webhooks import JwksCache, WebhookDelivery, WebhookReceiver
from batch.job import JobError, JobSpec
from batch.ledger import Ledger
from batch.ledger.group import GroupCommit
from batch.pipeline.race import first_of
from batch.pipeline.waiting import Poll, ServiceTimes

log = logging.getLogger("batch.run")

SAFETY_FACTOR = 1.5  # × p95 of the observed times from submit to webhook
NO_SAMPLE_FACTOR = 6.0  # × safety_net, before any time has been observed
WINDOW = 256  # recent observations kept
SLICE_S = 0.5  # how often a waiting item looks at a timeout that may have shrunk


class Arrivals:
    """Recent seconds from the start of a wait to its result; their p95."""

    def __init__(self, window: int = WINDOW) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._p95: float | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def record(self, seconds: float) -> None:
        self._samples.append(max(0.0, seconds))
        self._p95 = None

    def p95(self) -> float | None:
        if not self._samples:
            return None
        if self._p95 is None:
            ordered = sorted(self._samples)
            self._p95 = ordered[int(0.95 * (len(ordered) - 1))]
        return self._p95


class WebhookWaits:
    """Deliveries in (from the receiver), one result out per waiting item.

    `stats`: `received` (verified deliveries for a waiting or soon-waiting item), `ignored`
    (duplicates, late ones, ones for items already done), `safety_net` (items polled after
    the timeout), `won_by_poll` / `won_by_webhook` (who answered after the safety net fired).
    """

    def __init__(
        self,
        ledger: Ledger,
        writes: GroupCommit,
        *,
        safety_net: float,
        stats: Counter[str] | None = None,
    ) -> None:
        self.ledger = ledger
        self.writes = writes
        self.safety_net = safety_net
        self.arrivals = Arrivals()
        self.stats: Counter[str] = Counter() if stats is None else stats
        self.public_url: str | None = None
        self.receiver: WebhookReceiver | None = None
        self._waiting: dict[str, asyncio.Future[WebhookDelivery]] = {}
        self._early: dict[str, WebhookDelivery] = {}  # came while nobody waited for it
        self._consumed: set[str] = set()  # request ids whose wait has returned

    def __repr__(self) -> str:
        return f"WebhookWaits(waiting={len(self._waiting)}, stats={dict(self.stats)})"

    def timeout(self, service: ServiceTimes | None = None) -> float:
        """Seconds an item waits for its webhook before the safety-net poll starts."""
        p95 = self.arrivals.p95()
        if p95 is None and service is not None and service.samples:
            p95 = service.estimate
        if p95 is None:
            return self.safety_net * NO_SAMPLE_FACTOR
        return max(self.safety_net, SAFETY_FACTOR * p95)

    # --- the receiver's side ----------------------------------------------------------------

    def accepts(self, request_id: str) -> bool:
        """Whether the request belongs to this job (any item's current request). A webhook
        may come before its request id, just answered, is committed: the run's queued
        transitions are committed first, then the ledger asked again."""
        if self.ledger.find_request(request_id) is not None:
            return True
        self.writes.flush()
        return self.ledger.find_request(request_id) is not None

    async def on_delivery(self, delivery: WebhookDelivery) -> bool:
        """Hand a verified delivery to its item. Always acknowledged: duplicates and late
        deliveries are ignored (the item is finalized, or being finalized, once)."""
        rid = delivery.request_id
        row = self.ledger.find_request(rid)
        waiter = self._waiting.get(rid)
        seen = rid in self._consumed or rid in self._early or (waiter is not None and waiter.done())
        if row is None or row.state != "submitted" or seen:
            self.stats["ignored"] += 1
        else:
            self.stats["received"] += 1
            if waiter is not None:
                waiter.set_result(delivery)
            else:
                self._early[rid] = delivery  # its item is between turns: kept for its wait
        return True

    # --- the item's side --------------------------------------------------------------------

    async def wait(
        self, handle: RequestHandle, poll: Poll, service: ServiceTimes | None = None
    ) -> Completed:
        """The item's result: its webhook, or after the safety-net timeout whichever of its
        webhook and a poll comes first. `service`: what the polls observed (`Waiter.service`)."""
        rid = handle.request_id
        self._consumed.discard(rid)
        early = self._early.pop(rid, None)
        if early is not None:
            return self._done(rid, early.completed())
        loop = asyncio.get_running_loop()
        hook: asyncio.Future[WebhookDelivery] = loop.create_future()
        self._waiting[rid] = hook
        started = loop.time()
        try:
            if await self._until_timeout(hook, started, service):
                self.arrivals.record(loop.time() - started)
                return self._done(rid, hook.result().completed())
            self.stats["safety_net"] += 1
            completed = await self._race(hook, handle, poll)
            if hook.done() and not hook.cancelled():
                self.arrivals.record(loop.time() - started)
            return self._done(rid, completed)
        finally:
            self._waiting.pop(rid, None)
            if not hook.done():
                hook.cancel()

    def _done(self, rid: str, completed: Completed) -> Completed:
        self._consumed.add(rid)
        return completed

    async def _until_timeout(
        self, hook: asyncio.Future[WebhookDelivery], started: float, service: ServiceTimes | None
    ) -> bool:
        """Wait for the webhook until the (re-evaluated) timeout; True if it came."""
        loop = asyncio.get_running_loop()
        while not hook.done():
            remaining = started + self.timeout(service) - loop.time()
            if remaining <= 0:
                return False
            await asyncio.wait({hook}, timeout=min(remaining, SLICE_S))
        return True

    async def _race(
        self, hook: asyncio.Future[WebhookDelivery], handle: RequestHandle, poll: Poll
    ) -> Completed:
        poller = asyncio.ensure_future(poll(handle))
        await first_of(asyncio.shield(hook), poller)
        if hook.done() and not hook.cancelled():
            self.stats["won_by_webhook"] += 1
            return hook.result().completed()
        self.stats["won_by_poll"] += 1
        return poller.result()  # the poll's answer, or its error


def check_detach(spec: JobSpec) -> None:
    """`run --detach` needs a remote queue and a public webhook URL; else JobError."""
    if spec.local:
        raise JobError(["--detach: needs a remote queue (queue: local ends with the run)"])
    if spec.webhook.public_url is None:
        raise JobError(["--detach: webhook.public_url (--webhook-url) is required"])


def submit_webhook_url(spec: JobSpec, waits: WebhookWaits | None, detach: bool) -> str | None:
    """What submits carry as `fal_webhook`: this run's receiver, or for a detached run the
    public URL of the receiver that `webhook serve` runs."""
    if waits is not None:
        return waits.public_url
    return spec.webhook.public_url if detach else None


@contextlib.asynccontextmanager
async def webhook_waits(
    spec: JobSpec,
    client: QueueClient,
    ledger: Ledger,
    writes: GroupCommit,
    *,
    enabled: bool,
    stats: Counter[str] | None = None,
) -> AsyncIterator[WebhookWaits | None]:
    """The run's receiver, listening on `webhook.listen`, while the block runs (None when not
    `enabled`). With `queue: local` the JWKS is the embedded simulator's and the public URL,
    unless set, is the receiver's own address. `stats` (e.g. `RunStats.webhooks`) receives the
    waits' counts."""
    if not enabled:
        yield None
        return
    waits = WebhookWaits(ledger, writes, safety_net=spec.webhook.safety_net, stats=stats)
    jwks_url = f"{client.base_url}/.well-known/jwks.json" if spec.local else spec.webhook.jwks_url
    receiver = WebhookReceiver(
        JwksCache.from_url(client.session, jwks_url),
        accepts=waits.accepts,
        on_delivery=waits.on_delivery,
    )
    try:
        url = await receiver.start(spec.webhook.host, spec.webhook.port)
    except OSError as exc:  # the port is taken, the host is not ours...
        raise JobError([f"webhook.listen: cannot listen on {spec.webhook.listen}: {exc}"]) from None
    waits.receiver = receiver
    waits.public_url = spec.webhook.public_url or url
    log.info("webhook receiver listening on %s; fal posts to %s", url, waits.public_url)
    try:
        yield waits
    finally:
        await receiver.stop()
        waits.stats.update(receiver.stats)  # accepted, rejected:<reason>, not_now
        log.info("webhooks: %s", dict(waits.stats) or "none")


def detached_message(counts: dict[str, int]) -> str:
    return (
        f"detached: {counts.get('submitted', 0)} requests at fal; `firered-batch webhook serve` "
        "collects their results (or run the same command again to poll for them)"
    )
