"""The HTML contact sheet: ``<output>/report.html``, derived from the ledger (invariant 4).

One self-contained page that works offline: every item's input and output thumbnails side by
side (files under ``thumbs/``, or an output itself when it is no bigger than a thumbnail; see
`batch.report.thumbnails`; never a full image inlined, never a remote image fetched), its prompt,
seed, state, latency, error (with fal's error type) or NSFW flag, fal's billable units, and
links to the full images. Summary counts, the job's spend (`batch.ledger.spend`: from fal's
billable units where the ledger has them, else estimated), a latency histogram (inline SVG),
filters (all, completed, failed, flagged, unfinished), a search on prompt or id, and
client-side pagination — the items are embedded as JSON, so 10,000 items stay one light page.
People's reviews of the outputs (`batch.ledger.reviews`: approved, rejected, a note) show as
badges, counts and filters, read-only; `firered-batch review` serves the same page with review
controls (`render_report` with the review server's `PageExtras`, `batch.report.review`).
A pilot's items (``run --sample``) carry a badge and a filter; a redo of a rejected item
(``retry --rejected``) is shown right after it. A ledger with several endpoints (a comparison)
adds the Compare view: one row per input, one column per endpoint (`batch.report.compare`).

The ledger is read through its own connection, in one snapshot, streaming: a few hundred rows
(with their request JSON) at a time; the page keeps a compact record per item. The file is
written atomically. Every run writes it at its end; ``firered-batch report JOB`` on demand.
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.ledger.prices import parse_kept, price_key
from batch.ledger.reviews import Decision, ReviewCounts, counts_in, decisions_in
from batch.ledger.spend import JobSpend, spend_in
from batch.manifest.pricing import PriceSpec, usd
from batch.outputs.durable import atomic_writer
from batch.report.compare import Compared
from batch.report.page import PageExtras, histogram_svg, render_page
from batch.report.thumbnails import Media, Thumbnailer, local_inputs

if TYPE_CHECKING:
    from batch.job import JobSpec

log = logging.getLogger("batch.report.sheet")

REPORT_NAME = "report.html"
CHUNK = 200  # items whose thumbnails are made together
PROMPT_CHARS = 1000
ERROR_CHARS = 600
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one for every record
_SQL = """
    SELECT i.key, i.source, i.state, i.attempts, i.request, i.error_kind, i.error_message,
           i.seed, i.nsfw, i.timings, i.submitted_at, i.completed_at, i.possible_duplicate,
           o.path, o.width, o.height, o.bytes, i.error_type, i.billable_units, i.recovered,
           o.idx, i.endpoint, {pilot}, {redo_of}
    FROM items AS i LEFT JOIN outputs AS o ON o.item_key = i.key
    ORDER BY i.key, o.idx
"""


@dataclass
class Report:
    """What was written: the page, its items, and the thumbnails made or failed now."""

    path: Path
    items: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    flagged: int = 0
    recovered: int = 0  # lost submit answers found in fal's request history
    resubmitted: int = 0  # lost submit answers sent again (possible duplicates)
    thumbs_made: int = 0
    thumbs_failed: int = 0
    latencies: list[float] = field(default_factory=list)
    output_images: int = 0
    output_pixels: int = 0
    spend: JobSpend | None = None  # with a price: the job's spend, read in the page's snapshot
    reviews: ReviewCounts | None = None  # output images by review (None: a ledger before m008)
    review_event: int = 0  # the latest review event the page shows
    pilot: int = 0  # items of a pilot's sample
    redos: int = 0  # redos of rejected items
    compare: Compared | None = None  # a ledger with several endpoints: their comparison


@dataclass
class _Item:
    """One item on its way to the page: its compact record and its pictures."""

    record: dict[str, Any]
    inputs: list[Media]
    outputs: list[Media]

    def finish(self, failed: set[str]) -> dict[str, Any]:
        def shown(media: Media) -> list[str | None]:
            if media.thumb is not None and media.thumb in failed:
                href = None if media.href == media.thumb else media.href
                media = Media(None, href, "no thumbnail")
            return media.as_list()

        self.record["i"] = [shown(m) for m in self.inputs]
        self.record["o"] = [shown(m) for m in self.outputs]
        return self.record


def write_report(
    output_dir: Path,
    *,
    title: str,
    price: PriceSpec | None = None,
    endpoint: str | None = None,
    now: float | None = None,
    endpoints: Sequence[str] = (),
) -> Report:
    """Write ``<output_dir>/report.html`` (and its thumbnails) from the ledger there. Without
    `price`, the price a run kept for `endpoint` (fal's) is used, if any. `endpoints`: a
    comparison's, in the job's order (the Compare view's columns)."""
    report, page = render_report(
        output_dir, title=title, price=price, endpoint=endpoint, now=now, endpoints=endpoints
    )
    with atomic_writer(report.path, newline="\n") as fh:
        fh.write(page)
    return report


def render_report(
    output_dir: Path,
    *,
    title: str,
    price: PriceSpec | None = None,
    endpoint: str | None = None,
    now: float | None = None,
    extras: PageExtras | None = None,
    endpoints: Sequence[str] = (),
) -> tuple[Report, str]:
    """The report's page (its thumbnails made) and what it holds, without writing the page;
    `extras`: what the review server adds to it."""
    db_path = output_dir / "ledger.sqlite"
    if not db_path.is_file():
        raise FileNotFoundError(f"{output_dir}: no ledger yet (has this job been run?)")
    report = Report(output_dir / REPORT_NAME)
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("BEGIN")  # one snapshot for the whole page
        thumbs = Thumbnailer(output_dir, local_inputs(_local_files(conn)))
        reviews = _reviews(conn, report)
        order = [*endpoints, endpoint] if endpoint else endpoints
        report.compare = Compared.read(conn, order, price, endpoint)  # the job file's price
        records: list[str] = []
        for chunk in _chunks(_items(conn, thumbs, report, reviews), CHUNK):
            failed = thumbs.make()
            records.extend(_json(item.finish(failed)) for item in chunk)
        price = price or _kept_price(conn, endpoint)
        if price is not None:
            report.spend = spend_in(conn, price, _local_sizes(conn), endpoint)
        conn.execute("COMMIT")
    finally:
        conn.close()
    report.thumbs_made, report.thumbs_failed = thumbs.made, thumbs.failed
    page = render_page(
        title=title,
        generated=_iso(now if now is not None else time.time()),
        summary=_summary(report),
        histogram=histogram_svg(report.latencies),
        items_json="[" + ",\n".join(records) + "]",
        extras=extras,
        compare_json=None if report.compare is None else report.compare.json(),
    )
    return report, page


def report_for(spec: JobSpec) -> Report:
    """`write_report` for a job: its output folder, name and price."""
    return write_report(
        spec.output,
        title=spec.name,
        price=spec.price,
        endpoint=spec.endpoint,
        endpoints=spec.endpoints,
    )


def _kept_price(conn: sqlite3.Connection, endpoint: str | None) -> PriceSpec | None:
    if endpoint is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (price_key(endpoint),)).fetchone()
    return parse_kept(row[0] if row else None)


def write_report_quietly(spec: JobSpec) -> Path | None:
    """`report_for`, as a run's last step: a report that cannot be written only logs a
    warning (the run's outcome does not depend on it)."""
    try:
        return report_for(spec).path
    except Exception as exc:  # the page is derived; the ledger and exports are what count
        log.warning("report not written: %s: %s", type(exc).__name__, exc)
        return None


def _local_files(conn: sqlite3.Connection) -> list[tuple[str, str, int, int]]:
    try:
        sql = "SELECT sha256, path, size, mtime_ns FROM local_files ORDER BY seen_at, path"
        return [tuple(row) for row in conn.execute(sql)]
    except sqlite3.OperationalError:  # a ledger from before local files
        return []


def _local_sizes(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    try:
        rows = conn.execute("SELECT sha256, width, height FROM local_files").fetchall()
    except sqlite3.OperationalError:  # a ledger from before local files
        return {}
    return {sha: (width, height) for sha, width, height in rows}


def _reviews(conn: sqlite3.Connection, report: Report) -> dict[tuple[str, int], Decision]:
    try:
        found = decisions_in(conn)
        report.reviews = counts_in(conn)
    except sqlite3.OperationalError:  # a ledger from before reviews
        return {}
    report.review_event = max((d.event for d in found.values()), default=0)
    return found


def _review_fields(
    record: dict[str, Any],
    key: str,
    indexes: Sequence[int],
    reviews: dict[tuple[str, int], Decision],
) -> None:
    """``oi``: the outputs' indexes, when they are not 0, 1, …; ``rv``: their reviews in force
    (``{d, n, by, v}`` or null each), when any output of the item was ever reviewed."""
    if list(indexes) != list(range(len(indexes))):
        record["oi"] = list(indexes)
    found = [reviews.get((key, i)) for i in indexes]
    if any(found):
        record["rv"] = [
            None if d is None else {"d": d.decision, "n": d.note, "by": d.reviewer, "v": d.version}
            for d in found
        ]


def _chunks(items: Iterator[_Item], size: int) -> Iterator[list[_Item]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _items(
    conn: sqlite3.Connection,
    thumbs: Thumbnailer,
    report: Report,
    reviews: dict[tuple[str, int], Decision],
) -> Iterator[_Item]:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(items)")}
    cursor = conn.execute(  # a ledger from before pilots and redos has neither column
        _SQL.format(
            pilot="i.pilot" if "pilot" in columns else "0",
            redo_of="i.redo_of" if "redo_of" in columns else "NULL",
        )
    )
    rows = itertools.chain.from_iterable(iter(lambda: cursor.fetchmany(500), []))
    for key, group in itertools.groupby(rows, lambda r: r[0]):
        members = list(group)
        item = _item(members, thumbs, report)
        indexes = [m[20] for m in members if m[13] is not None]
        if indexes:
            _review_fields(item.record, key, indexes, reviews)
        yield item


def _item(members: Sequence[Sequence[Any]], thumbs: Thumbnailer, report: Report) -> _Item:
    (key, source, state, attempts, request, error_kind, error_message, seed, nsfw, timings,
     submitted_at, completed_at, duplicate) = members[0][:13]  # fmt: skip
    error_type, units, recovered = members[0][17:20]
    endpoint, pilot, redo_of = members[0][21:24]
    payload = _loads(request)
    outputs = [m[13:17] for m in members if m[13] is not None]
    flagged = any(_loads(nsfw) or [])
    latency = _latency(state, submitted_at, completed_at, timings)
    report.items += 1
    report.counts[state] += 1
    report.flagged += flagged
    report.recovered += bool(recovered)
    report.resubmitted += bool(duplicate)
    if latency is not None:
        report.latencies.append(latency)
    if state == "completed":
        report.output_images += len(outputs)
        report.output_pixels += sum((w or 0) * (h or 0) for _, w, h, _ in outputs)
    prompt = payload.get("prompt") if isinstance(payload, dict) else None
    record: dict[str, Any] = {
        "k": key,
        "s": state,
        "p": _cut(prompt if isinstance(prompt, str) else "", PROMPT_CHARS),
        "sd": seed,
        "l": None if latency is None else round(latency, 3),
        "f": flagged,
        "a": attempts,
        "src": source,
    }
    if error_kind or error_message:
        record["e"] = _cut(f"{error_kind or 'error'}: {error_message or ''}", ERROR_CHARS)
    if error_type:
        record["et"] = _cut(error_type, ERROR_CHARS)
    if units is not None:
        record["u"] = units
    if duplicate:
        record["d"] = True
    if recovered:
        record["r"] = True
    _lineage(record, report, pilot, redo_of)
    if report.compare is not None:
        pixels = [(w or 0) * (h or 0) for _, w, h, _ in outputs] if state == "completed" else []
        report.compare.add(record, endpoint, state, units, pixels)
    return _Item(
        record,
        [thumbs.input(url) for url in _input_urls(payload)],
        [thumbs.output(path, w, h, size) for path, w, h, size in outputs],
    )


def _lineage(record: dict[str, Any], report: Report, pilot: Any, redo_of: str | None) -> None:
    """``pl``: in a pilot's sample; ``ro``: the key of the rejected item this one redoes."""
    if pilot:
        record["pl"] = True
        report.pilot += 1
    if redo_of:
        record["ro"] = redo_of
        report.redos += 1


def _input_urls(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return []
    urls = payload.get("image_urls")
    if isinstance(urls, list):
        return [u for u in urls if isinstance(u, str)]
    url = payload.get("image_url")
    return [url] if isinstance(url, str) else []


def _latency(
    state: str, submitted_at: float | None, completed_at: float | None, timings_json: str | None
) -> float | None:
    """Submit to completion (queue, inference and download), else the result's own timing."""
    if state != "completed":
        return None
    if submitted_at is not None and completed_at is not None and completed_at >= submitted_at:
        return float(completed_at - submitted_at)
    timings = _loads(timings_json)  # read only when needed: this runs for every item
    if isinstance(timings, dict) and isinstance(timings.get("inference"), int | float):
        return float(timings["inference"])
    return None


def _summary(report: Report) -> dict[str, Any]:
    counts = {s: report.counts.get(s, 0) for s in ("completed", "failed", "pending", "submitted")}
    summary: dict[str, Any] = {"total": report.items, **counts, "flagged": report.flagged}
    summary["recovered"], summary["resubmitted"] = report.recovered, report.resubmitted
    summary["pilot"], summary["redos"] = report.pilot, report.redos
    if report.reviews is not None:
        summary["review"] = report.reviews.as_dict()
    if report.spend is not None:
        spend = report.spend
        text = f"{usd(spend.spent)} spent"
        if spend.held:
            text += f" + {usd(spend.held)} in flight"
        summary["cost"] = f"{text} ({spend.basis()})"
    if report.compare is not None:  # one price for every endpoint would be wrong
        summary["cost"] = report.compare.cost_line()
    return summary


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json(record: dict[str, Any]) -> str:
    """Compact JSON safe inside a <script> element."""
    text = _JSON.encode(record)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
