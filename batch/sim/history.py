"""fal's request history: `GET /v1/models/requests/by-endpoint` (fal-protocol.md §11 row 13).

fal's Platform API lists an account's requests to one endpoint (docs: platform-apis/v1/models/
requests/by-endpoint); a client whose submit answer was lost finds its request there by the
payload it sent, near the time it sent it, and re-attaches instead of paying again.

Query (`Authorization: Key <key>`, route `history` for counters and fault rules):

- `endpoint_id` (required; outer slashes ignored), `request_id` (one request only);
- `start`, `end`: ISO8601 (`2025-01-01T00:00:00Z`, `2025-01-01`; no zone means UTC). `start`
  defaults to 24 h before now, 90 days with a `request_id`; `end` to now, exclusive. fal does
  not say which time they filter on; this filters on `sent_at`, the only one a client that
  lost the answer knows;
- `status`: `success` (2xx), `user_error` (4xx: 422, 499 cancelled), `error` (the rest: 5xx,
  504 timeouts); a request not yet ended matches none of them;
- `expand` (repeated or comma-separated): `payloads` adds `json_input` (the submitted body)
  and `json_output` (the result; null unless it ended 2xx), `billing` adds `billable_units`;
- `limit` 1..100 (default 50); `cursor`: base64 of the page number, as fal's "Mg==" (page 2);
  pages are cut afresh on every call, so a request ending between two calls shifts them;
- `sort_by`: `ended_at` (default) or `duration`, descending; requests not yet ended first,
  ties newest-submitted first.

Bad values answer 422 with the pricing route's `{"detail": [{"loc": ["query", name], "msg",
"type"}]}`.

Answer: `{"items": [{"request_id", "endpoint_id", "sent_at", "started_at", "ended_at",
"status_code", "duration"[, "json_input", "json_output"][, "billable_units"]}], "next_cursor",
"has_more"}`. Times are UTC ISO8601 with `Z`, null until they happen; `duration` is seconds
from the start of the request's (last) run to its end, 0 for one that never ran, null until it
ended. A request submitted with `X-Fal-Store-IO: 0` has both payloads null.

Which requests, and when (`SimConfig`; defaults are the worst case for a client): only those
the queue accepted (a submit refused with 403/422/429 is not; one whose answer a `drop_after`
fault lost is). `history_shows: ended` lists a request once it ended, `sent` from its submit on.
`history_lag_s` shows everything as it was that many seconds ago on the simulator's clock.

`History` keeps its own records, apart from the jobs whose results expire: the newest
`history_max_requests` requests (oldest dropped first), with their input and 2xx output.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from batch.sim.clock import Clock
from batch.sim.config import SimConfig
from batch.sim.gateway import json_response
from batch.sim.jobs import Job, JobRecord

DAY_S = 24 * 3600.0
DEFAULT_WINDOW_S = DAY_S  # fal: start defaults to 24 hours ago...
REQUEST_ID_WINDOW_S = 90 * DAY_S  # ...or 90 days ago when a request_id is given
MAX_LIMIT = 100
DEFAULT_LIMIT = 50
SCALAR_PARAMS = (
    "endpoint_id",
    "start",
    "end",
    "status",
    "request_id",
    "limit",
    "cursor",
    "sort_by",
)
MAX_PAGE_DIGITS = 18  # a cursor this API gave is far shorter; longer ones are not worth parsing
StatusClass = Literal["success", "error", "user_error"]


def encode_cursor(page: int) -> str:
    """fal's cursor "encodes the page number": base64 of its decimal text ("Mg==" is 2)."""
    return base64.b64encode(str(page).encode("ascii")).decode("ascii")


def page_of_cursor(value: Any) -> int:
    """The page a cursor names (1 is the first); ValueError for anything else."""
    if not isinstance(value, str):
        raise ValueError("cursor must be a string")
    try:
        text = base64.b64decode(value, validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("cursor is not one this API gave") from exc
    if not text.isdecimal() or len(text) > MAX_PAGE_DIGITS or int(text) < 1:
        raise ValueError("cursor is not one this API gave")
    return int(text)


class HistoryQuery(BaseModel):
    """The query parameters, checked the way fal's API (FastAPI) checks them."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    endpoint_id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    start: datetime | None = None
    end: datetime | None = None
    status: StatusClass | None = None
    request_id: str | None = None
    expand: tuple[Literal["payloads", "billing"], ...] = ()
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT
    page: Annotated[int, BeforeValidator(page_of_cursor)] = Field(default=1, alias="cursor")
    sort_by: Literal["ended_at", "duration"] = "ended_at"

    @classmethod
    def from_request(cls, request: web.Request) -> HistoryQuery:
        """The first value of each parameter; `expand` from every value, split on commas."""
        query = request.query
        data: dict[str, Any] = {name: query[name] for name in SCALAR_PARAMS if name in query}
        expand = [part.strip() for value in query.getall("expand", []) for part in value.split(",")]
        data["expand"] = tuple(part for part in expand if part)
        return cls.model_validate(data)


def epoch(value: datetime) -> float:
    """Epoch seconds; a time without a zone is UTC (fal's times are all UTC)."""
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def status_class(code: int) -> StatusClass:
    if 200 <= code < 300:
        return "success"
    return "user_error" if 400 <= code < 500 else "error"


@dataclass(slots=True, eq=False)
class Entry:
    """One accepted request. The record is the model's (it keeps every `JobRecord`, so its
    stamps are live and cost nothing more); input and output are held here, because the job
    that carries them is dropped when its result expires."""

    seq: int  # accept order: the tie-break between equal sort keys
    record: JobRecord
    json_input: Any  # the submitted JSON body; None with payload storage off
    store_io: bool
    output: bytes | None = None  # the 2xx result body, once ended (payload storage on)


@dataclass(slots=True, frozen=True)
class Row:
    """An entry as the history shows it now (`as_of` = now - lag)."""

    entry: Entry
    started_at: float | None
    ended_at: float | None
    status_code: int | None
    duration: float | None

    @classmethod
    def of(cls, entry: Entry, as_of: float, shows: str) -> Row | None:
        """The row, or None while the history does not show the request yet."""
        rec = entry.record
        if rec.submitted_at > as_of:
            return None
        ended_at = rec.completed_at
        if ended_at is not None and ended_at > as_of:
            ended_at = None
        if shows == "ended" and ended_at is None:
            return None
        started_at = rec.started_at
        if started_at is not None and started_at > as_of:
            started_at = None
        if ended_at is None:
            return cls(entry, started_at, None, None, None)
        duration = ended_at - started_at if started_at is not None else 0.0
        return cls(entry, started_at, ended_at, rec.result_status, duration)

    def sort_key(self, by: str) -> tuple[bool, float, int]:
        """Ascending order of this key is fal's: not ended first, then the largest value."""
        value = self.ended_at if by == "ended_at" else self.duration
        return (value is not None, -(value or 0.0), -self.entry.seq)

    def item(self, expand: tuple[str, ...]) -> dict[str, Any]:
        rec = self.entry.record
        item: dict[str, Any] = {
            "request_id": rec.request_id,
            "endpoint_id": rec.endpoint,
            "sent_at": iso(rec.submitted_at),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "status_code": self.status_code,
            "duration": None if self.duration is None else round(self.duration, 6),
        }
        ended = self.ended_at is not None
        if "payloads" in expand:
            output = self.entry.output
            item["json_input"] = self.entry.json_input
            item["json_output"] = json.loads(output) if ended and output is not None else None
        if "billing" in expand:
            units = rec.billed_units
            item["billable_units"] = float(units) if ended and units is not None else None
        return item


class History:
    """The newest `history_max_requests` accepted requests, and the route that lists them.

    The app calls `accepted(job)` on every accepted submit; the simulator calls `ended(job)`
    when a job completes (the model's `on_complete`)."""

    def __init__(self, config: SimConfig, clock: Clock = time.time) -> None:
        self.config = config
        self.clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # oldest accepted first
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"History(requests={len(self._entries)}, shows={self.config.history_shows!r})"

    def accepted(self, job: Job) -> None:
        """Record a request the queue has just accepted (before its answer is sent, so a
        dropped answer still leaves it here). It cannot have ended yet: the model runs it
        in a task of its own."""
        store_io = job.store_io
        entry = Entry(next(self._seq), job.record, job.payload if store_io else None, store_io)
        self._entries[job.request_id] = entry
        while len(self._entries) > self.config.history_max_requests:
            self._entries.popitem(last=False)

    def ended(self, job: Job) -> None:
        """Keep a completed job's output (its stamps and status are on its record)."""
        entry = self._entries.get(job.request_id)
        outcome = job.outcome
        if entry is None or outcome is None or not entry.store_io:
            return
        if 200 <= outcome.status < 300:
            entry.output = outcome.body

    def page(self, query: HistoryQuery) -> dict[str, Any]:
        """One page of the history, as fal's API answers it."""
        now = self.clock()
        as_of = now - self.config.history_lag_s
        window = REQUEST_ID_WINDOW_S if query.request_id is not None else DEFAULT_WINDOW_S
        start = epoch(query.start) if query.start is not None else now - window
        end = epoch(query.end) if query.end is not None else now
        endpoint = query.endpoint_id.strip("/")
        rows: list[Row] = []
        for entry in self._entries.values():
            rec = entry.record
            if rec.endpoint != endpoint or not start <= rec.submitted_at < end:
                continue
            if query.request_id is not None and rec.request_id != query.request_id:
                continue
            row = Row.of(entry, as_of, self.config.history_shows)
            if row is None:
                continue
            if query.status is not None and (
                row.status_code is None or status_class(row.status_code) != query.status
            ):
                continue
            rows.append(row)
        rows.sort(key=lambda row: row.sort_key(query.sort_by))
        first = (query.page - 1) * query.limit
        has_more = len(rows) > first + query.limit
        return {
            "items": [row.item(query.expand) for row in rows[first : first + query.limit]],
            "next_cursor": encode_cursor(query.page + 1) if has_more else None,
            "has_more": has_more,
        }

    async def handle(self, request: web.Request) -> web.Response:
        """`GET /v1/models/requests/by-endpoint`."""
        try:
            query = HistoryQuery.from_request(request)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            detail = [
                {"loc": ["query", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors
            ]
            return json_response({"detail": detail}, 422)
        return json_response(self.page(query))
