"""A submit whose answer was lost, found again in fal's request history instead of paid twice.

fal's queue has no idempotency key: when a submit's answer is lost (the connection dropped after
fal accepted it, or the run died between sending it and recording its request id), fal may run
it without us knowing its id. Before such an item is sent again, its submit — exactly what was
sent, and when (`Ledger.mark_submitting`) — is looked for in the endpoint's request history
(`PlatformClient.requests`): an entry with the same payload, sent near the same time, whose id
the ledger does not already hold. Found: the item is re-attached to it and never sent again.

fal does not say when a request first shows in its history; the worst case is only once it
ended (possibly after a lag). So an item not found yet is looked for again, with growing pauses,
until a bound derived from the job's `start_timeout` (or a queue allowance) and the run's
observed service times (`fal.history_wait` overrides it); only then is it sent again and
flagged `possible_duplicate`. One look reads the history from the earliest waiting send time on,
a page of 100 at a time, and serves every item waiting at that endpoint; it stops paging once
each has a candidate, and after `MAX_PAGES` pages.

Identical payloads (the same edit twice, random seeds) are interchangeable: each waiting item
takes the unclaimed entry sent nearest its own send. While another submit of the same payload
is still unanswered in this run, the decision waits (that answer may name an entry). More
matching entries than waiting items means someone else sends that payload too; it is said.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from batch.fal import (
    AuthError,
    FalError,
    HistoryEntry,
    NotFoundError,
    PermanentError,
    PlatformClient,
    QueueClient,
)
from batch.job import JobSpec
from batch.ledger import Ledger
from batch.ledger.models import canonical_json
from batch.pipeline.waiting import ServiceTimes

log = logging.getLogger("batch.run")

SKEW_S = 120.0  # how far fal's sent_at may lie from ours: clock skew plus the submit's trip
SETTLE_S = 30.0  # how long after it ended a request may take to show in the history
QUEUE_ALLOWANCE_S = 300.0  # how long a request may wait in fal's queue without start_timeout
MIN_SERVICE_S = 60.0  # the service time assumed before any was observed
FIRST_LOOK_S = 2.0  # the first look, after the item's answer was lost
MAX_PAUSE_S = 30.0  # the longest pause between two looks
MAX_PAGES = 20  # pages (of 100 requests) one look reads
STOP_SLICE_S = 0.5  # how often a pause looks whether the run is stopping


class Undecided(Exception):
    """The run is stopping before the history could tell: the item stays as the ledger has
    it (a submit on its way), and the next run looks again."""


@dataclass(frozen=True)
class Sent:
    """A submit whose answer was lost: the item, where, exactly what, and when (epoch s)."""

    key: str
    endpoint: str
    payload: str  # canonical JSON
    sent_at: float


@dataclass(eq=False)
class _Wait:
    sent: Sent
    give_up: float  # epoch seconds
    future: asyncio.Future[str | None]


@dataclass
class _Look:
    """What one look at an endpoint's history found for its waiting items."""

    candidates: dict[str, list[HistoryEntry]] = field(default_factory=lambda: defaultdict(list))
    entries: int = 0
    with_payload: int = 0


Sleep = Callable[[float], Awaitable[None]]


class Recovery:
    """Finds lost submits in fal's history for the items of one run (see the module doc).

    `known(endpoint)`: the request ids the ledger holds; `bound()`: seconds after its send
    that an item is looked for. `platform` None: no history (another queue, or `store_io`
    off): every lost submit is sent again at once, flagged."""

    def __init__(
        self,
        platform: PlatformClient | None,
        known: Callable[[str], set[str]],
        bound: Callable[[], float],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self._platform = platform
        self._known = known
        self._bound = bound
        self._clock = clock
        self._sleep = sleep
        self._draining = draining
        self._waits: list[_Wait] = []
        self._claimed: set[str] = set()  # ids taken by a look, or answered to this run
        self._sending: Counter[str] = Counter()  # payloads with a submit still unanswered
        self._task: asyncio.Task[None] | None = None
        self._new = asyncio.Event()
        self.stats: Counter[str] = Counter()  # recovered, not_found, looks, pages, shared

    @property
    def enabled(self) -> bool:
        return self._platform is not None

    def sending(self, payload: Any) -> str:
        """A submit of `payload` leaves; returns its canonical text for `answered`."""
        text = canonical_json(payload)
        self._sending[text] += 1
        return text

    def answered(self, text: str, request_id: str | None = None) -> None:
        """The submit of `text` got its answer (`request_id` when fal accepted it), or none."""
        self._sending[text] -= 1
        if self._sending[text] <= 0:
            del self._sending[text]
        if request_id is not None:
            self._claimed.add(request_id)

    async def find(self, sent: Sent) -> str | None:
        """The request id of this lost submit, or None once the history did not show it
        within the bound (send it again). Raises `Undecided` if the run stops first."""
        if self._platform is None:
            return None
        loop = asyncio.get_running_loop()
        wait = _Wait(sent, sent.sent_at + self._bound(), loop.create_future())
        self._waits.append(wait)
        self._new.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="history-recovery")
        try:
            return await wait.future
        finally:
            if wait in self._waits:  # the item was cancelled while waiting
                self._waits.remove(wait)

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._resolve(self._waits, Undecided())

    async def _run(self) -> None:
        pause = self._first_pause()
        try:
            while self._waits:
                self._new.clear()
                await self._pause(pause)
                if self._draining():
                    self._resolve(self._waits, Undecided())
                    return
                for endpoint in sorted({w.sent.endpoint for w in self._waits}):
                    await self._look(
                        endpoint, [w for w in self._waits if w.sent.endpoint == endpoint]
                    )
                now = self._clock()
                self._resolve([w for w in self._waits if w.give_up <= now], None)
                pause = self._first_pause() if self._new.is_set() else min(2 * pause, MAX_PAUSE_S)
        except Exception as exc:  # never leave an item waiting on a dead task
            log.exception("looking for lost submits in fal's request history failed")
            self._resolve(self._waits, exc)

    def _first_pause(self) -> float:
        return min(FIRST_LOOK_S, max(self._bound(), 0.0) / 4)

    async def _pause(self, seconds: float) -> None:
        """Sleep until the next look (no later than the first give-up, so the last look is made
        at it), waking early when the run stops."""
        until = min(self._clock() + seconds, min(w.give_up for w in self._waits))
        while (left := until - self._clock()) > 0 and not self._draining():
            await self._sleep(min(left, STOP_SLICE_S))

    async def _look(self, endpoint: str, waits: list[_Wait]) -> None:
        assert self._platform is not None
        self.stats["looks"] += 1
        try:
            look = await self._read(endpoint, waits)
        except (AuthError, NotFoundError, PermanentError) as exc:
            log.warning(
                "fal's request history cannot be read (%s): items whose submit answer was lost"
                " are sent again, flagged possible_duplicate",
                exc,
            )
            self._platform = None
            self._resolve(self._waits, None)
            return
        except FalError as exc:  # transient: look again next time, until the bound
            log.info("fal's request history did not answer (%s); looking again", exc)
            return
        if look.entries and not look.with_payload:
            log.warning(
                "fal's request history keeps no payloads for %s (store_io off for this"
                " account?): %d lost submits cannot be matched and are sent again",
                endpoint,
                len(waits),
            )
            self._resolve(waits, None)
            return
        self._assign(waits, look)

    async def _read(self, endpoint: str, waits: list[_Wait]) -> _Look:
        """Pages of the history from the earliest waiting send on, until every waiting item
        has a candidate or `MAX_PAGES`."""
        assert self._platform is not None
        known = self._known(endpoint) | self._claimed
        wanted = Counter(w.sent.payload for w in waits)
        keysets = {tuple(sorted(json.loads(text))) for text in wanted}
        look = _Look()
        start = min(w.sent.sent_at for w in waits) - SKEW_S
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await self._platform.requests(endpoint, start=start, cursor=cursor)
            self.stats["pages"] += 1
            for entry in page.entries:
                look.entries += 1
                look.with_payload += entry.json_input is not None
                if entry.request_id in known:
                    continue
                for text in _projections(entry.json_input, keysets):
                    if text in wanted:
                        look.candidates[text].append(entry)
            if not page.has_more or all(len(look.candidates[t]) >= n for t, n in wanted.items()):
                break
            cursor = page.next_cursor
        return look

    def _assign(self, waits: list[_Wait], look: _Look) -> None:
        by_payload: dict[str, list[_Wait]] = defaultdict(list)
        for wait in waits:
            by_payload[wait.sent.payload].append(wait)
        for text, group in by_payload.items():
            if self._sending[text]:
                continue  # a submit of the same payload is unanswered: its answer may name one
            entries = {e.request_id: e for e in look.candidates.get(text, [])}
            if len(entries) > len(group):
                self.stats["shared"] += 1
                log.warning(
                    "%d requests in fal's history carry the payload of item %s (%d waiting):"
                    " someone else sends it too; each item takes the one sent nearest its own",
                    len(entries),
                    group[0].sent.key,
                    len(group),
                )
            for wait in sorted(group, key=lambda w: w.sent.sent_at):
                entry = _nearest(wait.sent.sent_at, entries.values())
                if entry is None:
                    continue
                del entries[entry.request_id]
                self._claimed.add(entry.request_id)
                self.stats["recovered"] += 1
                self._resolve([wait], entry.request_id)

    def _resolve(self, waits: Iterable[_Wait], outcome: str | BaseException | None) -> None:
        for wait in list(waits):
            if wait in self._waits:
                self._waits.remove(wait)
            if wait.future.done():
                continue
            if isinstance(outcome, BaseException):
                wait.future.set_exception(outcome)
            else:
                if outcome is None:
                    self.stats["not_found"] += 1
                wait.future.set_result(outcome)


def _nearest(sent_at: float, entries: Iterable[HistoryEntry]) -> HistoryEntry | None:
    """The entry sent nearest `sent_at` within the skew (one without a send time last)."""
    best: tuple[float, HistoryEntry] | None = None
    for entry in entries:
        gap = SKEW_S if entry.sent_at is None else abs(entry.sent_at - sent_at)
        if gap <= SKEW_S and (best is None or gap < best[0]):
            best = (gap, entry)
    return None if best is None else best[1]


def _projections(json_input: Any, keysets: set[tuple[str, ...]]) -> Iterable[str]:
    """The entry's input as each waiting payload's keys see it (fal may add defaults to what it
    keeps; what we sent must be there unchanged), canonical, for exact comparison."""
    if not isinstance(json_input, dict):
        return
    for keys in keysets:
        if all(k in json_input for k in keys):
            yield canonical_json({k: json_input[k] for k in keys})


def history_bound(
    start_timeout: float | None, service: float | None, override: float | None
) -> float:
    """Seconds after its send that a lost submit is looked for before it is sent again: the
    longest it can wait to start, plus twice the longest it runs, plus the history's lag."""
    if override is not None:
        return override
    queue = start_timeout if start_timeout is not None else QUEUE_ALLOWANCE_S
    runs = 2 * (service if service is not None else MIN_SERVICE_S)
    return queue + runs + SETTLE_S


def make_recovery(
    spec: JobSpec,
    client: QueueClient,
    ledger: Ledger,
    service: ServiceTimes,
    platform_url: str | None,
    draining: Callable[[], bool],
) -> Recovery:
    """The run's `Recovery`: off (lost submits sent again at once) without a Platform API, or
    with `store_io: false`, under which fal keeps no payloads to match."""
    platform = None
    if platform_url is not None and spec.fal.store_io:
        platform = PlatformClient(client.session, client.credentials, base_url=platform_url)

    def bound() -> float:
        seen = service.estimate + 4 * service.spread if service.samples else None
        return history_bound(spec.start_timeout, seen, spec.fal.history_wait)

    return Recovery(platform, ledger.known_request_ids, bound, draining=draining)
