"""A submit whose answer was lost, found again in fal's request history instead of paid twice.

fal's queue has no idempotency key: when a submit's answer is lost (the connection dropped after
fal accepted it, or the run died between sending it and recording its request id), fal may run
it without us knowing its id. Before such an item is sent again, its submit — exactly what was
sent, and when (`Ledger.mark_submitting`) — is looked for in the endpoint's request history
(`batch.pipeline.history_scan`): an entry with the same payload, sent near the same time, whose
id is nobody's yet. Found: the item is re-attached to it and never sent again.

fal does not say when a request first shows in its history; the worst case is only once it
ended (possibly after a lag). So an item not found yet is looked for again, with growing pauses,
until a bound derived from the job's `start_timeout` (or a queue allowance) and the run's
observed service times (`fal.history_wait` overrides it); only then is it sent again and
flagged `possible_duplicate`. A look that could not read back to the item's send time (more
requests ended since than a look reads) decides nothing: at the bound the item is left as it is
for a later run (`Undecided`), never sent again on a guess. One look serves every item waiting
at that endpoint.

Identical payloads (the same edit twice, random seeds) are interchangeable: each waiting item
takes the unclaimed entry sent nearest its own send. A submit of the same payload that was on
the wire during a look may be one of its entries: the items wait for its answer (which claims
its id) before taking any. More matching entries than waiting items means someone else sends
that payload too; it is said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass

from batch.fal import (
    AuthError,
    FalError,
    NotFoundError,
    PermanentError,
    PlatformClient,
    QueueClient,
)
from batch.fal.history import MAX_HISTORY_LIMIT
from batch.job import JobSpec
from batch.ledger import Ledger
from batch.pipeline.history_scan import (
    MIN_LIMIT,
    Known,
    Look,
    Sent,
    match_key,
    nearest,
    scan,
)
from batch.pipeline.waiting import ServiceTimes

__all__ = ["Recovery", "Sent", "Undecided", "history_bound", "make_recovery"]

log = logging.getLogger("batch.run")

SETTLE_S = 30.0  # how long after it ended a request may take to show in the history
QUEUE_ALLOWANCE_S = 300.0  # how long a request may wait in fal's queue without start_timeout
MIN_SERVICE_S = 60.0  # the service time assumed before any was observed
FIRST_LOOK_S = 2.0  # the first look, after the item's answer was lost
MIN_PAUSE_S = 0.1  # never two looks back to back
MAX_PAUSE_S = 30.0  # the longest pause between two looks
STOP_SLICE_S = 0.5  # how often a pause looks whether the run is stopping
ANSWER_WAIT_S = 120.0  # the longest a look waits for the answers of submits on the wire


class Undecided(Exception):
    """The history could not tell (the run is stopping, or it could not be read back far
    enough): the item stays as the ledger has it — a submit on its way — for a later look."""


@dataclass(eq=False)
class _Wait:
    sent: Sent
    give_up: float  # epoch seconds
    future: asyncio.Future[str | None]


Sleep = Callable[[float], Awaitable[None]]


class Recovery:
    """Finds lost submits in fal's history for the items of one run (see the module doc).

    `known(ids)`: which of these request ids the ledger holds; `bound()`: seconds after its
    send that an item is looked for. `platform` None: no history (`store_io` off, or no
    Platform API): every lost submit is sent again at once, flagged."""

    def __init__(
        self,
        platform: PlatformClient | None,
        known: Known,
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
        self._wire: dict[int, object] = {}  # submits on the wire: token -> payload
        self._tokens = 0
        self._answer = asyncio.Event()
        self._truncated: set[str] = set()  # endpoints whose last look was cut short
        self._limit = MAX_HISTORY_LIMIT
        self._said_no_payload = False  # logged once a run
        self._task: asyncio.Task[None] | None = None
        self._new = asyncio.Event()
        self.stats: Counter[str] = Counter()  # recovered, not_found, looks, pages, shared

    @property
    def enabled(self) -> bool:
        return self._platform is not None

    def sending(self, payload: object) -> int:
        """A submit of `payload` leaves; returns its token for `answered`. (Its match key is
        made only if a look needs it: this runs for every submit.)"""
        self._tokens += 1
        self._wire[self._tokens] = payload
        return self._tokens

    def answered(self, token: int, request_id: str | None = None) -> None:
        """The submit `token` got its answer (`request_id` when fal accepted it), or none."""
        self._wire.pop(token, None)
        if request_id is not None:
            self._claimed.add(request_id)
        self._answer.set()

    async def find(self, sent: Sent) -> str | None:
        """The request id of this lost submit, or None once the history did not show it
        within the bound (send it again). Raises `Undecided` when it cannot tell."""
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
        self._resolve(self._waits, Undecided("the run ended"))

    async def _run(self) -> None:
        pause = self._first_pause()
        try:
            while self._waits:
                self._new.clear()
                await self._pause(pause)
                if self._draining():
                    self._resolve(self._waits, Undecided("the run is stopping"))
                    return
                for endpoint in sorted({w.sent.endpoint for w in self._waits}):
                    await self._look(endpoint)
                self._give_up(self._clock())
                pause = self._first_pause() if self._new.is_set() else min(2 * pause, MAX_PAUSE_S)
        except Exception as exc:  # never leave an item waiting on a dead task
            log.exception("looking for lost submits in fal's request history failed")
            self._resolve(self._waits, exc)

    def _first_pause(self) -> float:
        return min(FIRST_LOOK_S, max(self._bound(), 0.0) / 4)

    async def _pause(self, seconds: float) -> None:
        """Sleep until the next look — no later than the first give-up, so that the last look
        is made at it — counting the time slept, not the clock (which may jump)."""
        due = min(w.give_up for w in self._waits) - self._clock()
        target = max(MIN_PAUSE_S, min(seconds, due))
        slept = 0.0
        while slept < target and not self._draining():
            step = min(target - slept, STOP_SLICE_S)
            await self._sleep(step)
            slept += step

    def _give_up(self, now: float) -> None:
        """Items past their bound: sent again (None), unless their history could not be read
        back far enough."""
        for wait in [w for w in self._waits if w.give_up <= now]:
            if wait.sent.endpoint in self._truncated:
                self._resolve([wait], Undecided("fal's history is too long to read back"))
            else:
                self._resolve([wait], None)

    async def _look(self, endpoint: str) -> None:
        assert self._platform is not None
        waits = [w for w in self._waits if w.sent.endpoint == endpoint]
        self.stats["looks"] += 1
        on_wire = set(self._wire)  # submits that may be among the entries this look reads
        first_new = self._tokens + 1
        try:
            look = await scan(
                self._platform, endpoint, [w.sent for w in waits], self._known, self._limit
            )
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
            self._limit = max(MIN_LIMIT, self._limit // 2)  # pages of big payloads time out
            log.info("fal's request history did not answer (%s); looking again", exc)
            return
        finally:
            on_wire |= {t for t in self._wire if t >= first_new}
        self.stats["pages"] += look.pages
        if look.truncated:
            self._truncated.add(endpoint)
        else:
            self._truncated.discard(endpoint)
        if look.without_payload and not self._said_no_payload:
            self._said_no_payload = True
            log.info("fal's request history has entries without payloads near a lost submit")
        await self._answers(on_wire, {w.sent.match for w in waits})
        self._assign(waits, look)

    async def _answers(self, tokens: set[int], keys: set[str]) -> None:
        """Wait until the submits in `tokens` of these payloads have their answers (bounded:
        each has its own timeout): an entry may be one of theirs."""
        deadline = time.monotonic() + ANSWER_WAIT_S
        tokens = {t for t in tokens if t in self._wire and match_key(self._wire[t]) in keys}
        while any(t in self._wire for t in tokens):
            left = deadline - time.monotonic()
            if left <= 0 or self._draining():
                return
            self._answer.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, STOP_SLICE_S)):
                    await self._answer.wait()

    def _assign(self, waits: list[_Wait], look: Look) -> None:
        by_payload: dict[str, list[_Wait]] = defaultdict(list)
        for wait in waits:
            by_payload[wait.sent.match].append(wait)
        for key, group in by_payload.items():
            found = [e for e in look.candidates.get(key, []) if e.request_id not in self._claimed]
            mine = self._known([e.request_id for e in found]) if found else set()
            entries = {e.request_id: e for e in found if e.request_id not in mine}
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
                entry = nearest(wait.sent.sent_at, entries.values())
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
        seen = None
        if service.samples:
            seen = max(service.longest, service.estimate + 4 * service.spread)
        return history_bound(spec.start_timeout, seen, spec.fal.history_wait)

    def known(ids: Collection[str]) -> set[str]:
        return ledger.known_request_ids(ids)

    return Recovery(platform, known, bound, draining=draining)
