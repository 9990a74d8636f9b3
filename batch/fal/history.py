"""fal's request history: one page of ``GET /v1/models/requests/by-endpoint``, parsed.

fal docs (platform-apis/v1/models/requests/by-endpoint): the requests of one endpoint, newest
end first, filtered by ``start``/``end`` (ISO 8601; start defaults to 24 h ago, 90 days with
``request_id``), ``status`` (success, error, user_error) and ``request_id``; ``limit`` 1 to 100,
``cursor`` from the previous page. With ``expand=payloads`` each entry carries the submitted
``json_input`` and the ``json_output``:

    200 {"items": [{"request_id", "endpoint_id", "sent_at", "started_at", "ended_at",
                    "status_code", "duration", "json_input", "json_output"}],
         "next_cursor": "Mg==", "has_more": true}

fal does not say when a request first appears (at submit, at start or once ended), nor which
timestamp ``start``/``end`` filter on; callers must assume the worst of both. An entry whose
fields cannot be read is skipped, not fatal: one odd row must not hide the rest of a page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batch.fal.errors import TransientError
from batch.fal.transport import Reply

MAX_HISTORY_LIMIT = 100  # fal's largest page


@dataclass(frozen=True)
class HistoryEntry:
    """One request as fal's history lists it; times are epoch seconds (None: not yet)."""

    request_id: str
    endpoint_id: str
    sent_at: float | None
    started_at: float | None
    ended_at: float | None
    status_code: int | None
    json_input: Any = None  # None also when fal keeps no payloads (X-Fal-Store-IO: 0)

    @property
    def ended(self) -> bool:
        return self.ended_at is not None or self.status_code is not None


@dataclass(frozen=True)
class HistoryPage:
    entries: list[HistoryEntry]
    next_cursor: str | None
    has_more: bool
    skipped: int = 0  # entries that could not be read


def iso_time(epoch: float) -> str:
    """Epoch seconds as fal's ISO 8601 UTC form (``2025-01-01T00:00:05.250Z``)."""
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return stamp.removesuffix("+00:00") + "Z"


def parse_time(value: Any) -> float | None:
    """An ISO 8601 time from fal as epoch seconds; None for null or anything unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # fal's times are UTC
    return parsed.timestamp()


def parse_history(reply: Reply) -> HistoryPage:
    body = reply.body if isinstance(reply.body, dict) else {}
    items = body.get("items")
    if not isinstance(items, list):
        raise TransientError("request history: answer has no items list", status=reply.status)
    entries = [e for e in (_entry(item) for item in items) if e is not None]
    cursor = body.get("next_cursor")
    has_more = body.get("has_more") is True and isinstance(cursor, str) and bool(cursor)
    return HistoryPage(
        entries, cursor if has_more else None, has_more, skipped=len(items) - len(entries)
    )


def _entry(item: Any) -> HistoryEntry | None:
    if not isinstance(item, dict):
        return None
    request_id, endpoint_id = item.get("request_id"), item.get("endpoint_id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > 200:
        return None
    code = item.get("status_code")
    if isinstance(code, bool) or not isinstance(code, int | float) or not math.isfinite(code):
        code = None
    return HistoryEntry(
        request_id=request_id,
        endpoint_id=endpoint_id if isinstance(endpoint_id, str) else "",
        sent_at=parse_time(item.get("sent_at")),
        started_at=parse_time(item.get("started_at")),
        ended_at=parse_time(item.get("ended_at")),
        status_code=None if code is None else int(code),
        json_input=item.get("json_input"),
    )
