"""One look at an endpoint's request history for lost submits (`batch.pipeline.recovery`).

`scan` reads fal's history from the earliest waiting send time on, newest-ended first, a page
at a time, and collects the entries whose payload matches a waiting item's and whose request
id is nobody's yet. It stops when every waiting item has a candidate, when the history is at
its end, or once a whole page ended before the earliest send: sorted by end time, nothing
further down can be one of ours, since a request ends after it was sent. `MAX_PAGES` bounds a
look; a look cut there is `truncated`, and no item is declared not found from it.

A payload matches when every field that was sent is in the entry's `json_input` with the same
value (fal may add the defaults it filled in), numbers compared by value (`4.0` is `4`).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from batch.fal import HistoryEntry, PlatformClient
from batch.ledger.models import canonical_json

SKEW_S = 120.0  # how far fal's sent_at may lie from ours: clock skew plus the submit's trip
MAX_PAGES = 100  # pages one look reads: the requests that ended since the earliest send
MIN_LIMIT = 10  # the smallest page asked for (pages shrink when large payloads time out)

Known = Callable[[Collection[str]], set[str]]  # of these request ids, the ones already ours


@dataclass(frozen=True)
class Sent:
    """A submit whose answer was lost: the item, where, exactly what, and when (epoch s)."""

    key: str
    endpoint: str
    payload: str  # canonical JSON
    sent_at: float

    @cached_property
    def match(self) -> str:
        """The payload's `match_key`, made once."""
        return match_key(json.loads(self.payload))


@dataclass
class Look:
    """What one look found: candidates by the waiting payload they match."""

    candidates: dict[str, list[HistoryEntry]] = field(default_factory=lambda: defaultdict(list))
    pages: int = 0
    truncated: bool = False  # stopped at MAX_PAGES with more to read
    without_payload: int = 0  # entries near a waiting send that carry no payload


def match_key(payload: Any) -> str:
    """The form in which payloads are compared: canonical JSON, integral floats as ints."""
    return canonical_json(_numbers(payload))


def _numbers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


async def scan(
    platform: PlatformClient, endpoint: str, sends: list[Sent], known: Known, limit: int
) -> Look:
    """Read the history for `sends` (all at `endpoint`); see the module doc."""
    wanted = Counter(s.match for s in sends)
    keysets = {tuple(sorted(json.loads(text))) for text in wanted}
    earliest = min(s.sent_at for s in sends) - SKEW_S
    look = Look()
    cursor: str | None = None
    while True:
        page = await platform.requests(endpoint, start=earliest, cursor=cursor, limit=limit)
        look.pages += 1
        mine = known([e.request_id for e in page.entries])
        for entry in page.entries:
            if entry.request_id in mine:
                continue
            if entry.json_input is None:
                look.without_payload += _near(entry, sends)
                continue
            for text in _projections(entry.json_input, keysets):
                if text in wanted:
                    look.candidates[text].append(entry)
        ended = [e.ended_at for e in page.entries]
        if (
            not page.has_more
            or all(len(look.candidates[t]) >= n for t, n in wanted.items())
            or (ended and all(t is not None and t < earliest for t in ended))
        ):
            return look
        if look.pages >= MAX_PAGES:
            look.truncated = True
            return look
        cursor = page.next_cursor


def _near(entry: HistoryEntry, sends: Iterable[Sent]) -> bool:
    return entry.sent_at is None or any(abs(entry.sent_at - s.sent_at) <= SKEW_S for s in sends)


def _projections(json_input: Any, keysets: set[tuple[str, ...]]) -> Iterator[str]:
    """The entry's input as each waiting payload's fields see it, for exact comparison."""
    if not isinstance(json_input, dict):
        return
    for keys in keysets:
        if all(k in json_input for k in keys):
            yield match_key({k: json_input[k] for k in keys})


def nearest(sent_at: float, entries: Iterable[HistoryEntry]) -> HistoryEntry | None:
    """The entry sent nearest `sent_at` within the skew (one without a send time last)."""
    best: tuple[float, HistoryEntry] | None = None
    for entry in entries:
        gap = SKEW_S if entry.sent_at is None else abs(entry.sent_at - sent_at)
        if gap <= SKEW_S and (best is None or gap < best[0]):
            best = (gap, entry)
    return None if best is None else best[1]
