"""`firered-batch review`: the report served with approve / reject / note per output image.

`review_app(output_dir, token, reviewer)` is an aiohttp app: the report page
(`batch.report.sheet.render_report`) plus ``assets/review.js`` and ``review.css``, the images
under the output folder, and ``/api/decisions``: GET ``?since=N`` → ``{last, decisions,
counts, reviewer}``, the reviews changed after review event N (the page polls it); POST
``{k, i, action: approve|reject|note|undo, n, v}`` → 200 ``{decision, counts, last}``, or 409
``{error, message, current, counts}`` when the review is no longer at version ``v`` (another
reviewer came first: nothing written) or has nothing to undo; 400 bad request, 404 unknown
output, 503 ledger busy (a run planning): not saved.

Who may use it: whoever has the token. The printed URL carries it (``/?token=…``); the first
request with it gets an HttpOnly, ``SameSite=Strict`` cookie named after the token (so two
servers on one host keep their own) and is redirected to the URL without it. Every request,
pages and images too, needs the token (cookie, ``?token=`` or an ``X-Firered-Token`` header),
else 403. A write must also come from the page itself: no cross-site ``Origin`` or
``Sec-Fetch-Site``, a JSON body, and the ``X-Firered-Review`` header that no form can send;
else 403. Unless served with ``remote=True``, the Host header must name the loopback
interface (a DNS-rebinding page gets 403). Files: images only (by suffix), not hidden, resolved
inside the output folder; anything else is 404.

The ledger is opened (and migrated) like any other reader: the server takes no run lock, so a
run may work on the folder meanwhile; each decision is one short transaction, and SQLite
serialises it with the run's writes (busy timeout). After decisions, ``report.html`` is written
again (in a thread; coalesced, the last write after the last decision), so it shows them.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

from aiohttp import web

from batch.errors import BatchError, InvalidInputError
from batch.ledger import Ledger
from batch.ledger.reviews import (
    NothingToUndoError,
    ReviewConflictError,
    Reviews,
    UnknownOutputError,
    Verdict,
    check_reviewer,
)
from batch.manifest.pricing import PriceSpec
from batch.report.page import PageExtras
from batch.report.sheet import render_report, write_report

log = logging.getLogger("batch.report.review")

POLL_MS = 3000  # how often the page asks for other reviewers' decisions
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WRITE_HEADER = "X-Firered-Review"
TOKEN_HEADER = "X-Firered-Token"
_VERDICTS: dict[str, Verdict] = {"approve": "approved", "reject": "rejected"}
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",  # keys decide: never inside another site's frame
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_ASSETS = files("batch.report") / "assets"


class RemoteHostError(InvalidInputError):
    """A host that is not the loopback interface, without ``--allow-remote``."""


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback interface only."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)  # for the review URL


@cache
def _asset(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class ReviewJob:
    """What the page says of the job: its name (default: the folder's), price and endpoint, and
    a comparison's endpoints in the job's order (the Compare view's columns)."""

    title: str | None = None
    price: PriceSpec | None = None
    endpoint: str | None = None
    endpoints: tuple[str, ...] = ()


class _Review:
    """One served output folder: its ledger, who reviews, and the report's rewrites."""

    def __init__(
        self, ledger: Ledger, token: str, reviewer: str, job: ReviewJob, remote: bool
    ) -> None:
        self.ledger = ledger
        self.root = ledger.output_dir.resolve()
        self.token = token
        self.cookie = "firered_review_" + hashlib.sha256(token.encode()).hexdigest()[:12]
        self.reviewer = reviewer
        self.job: dict[str, Any] = {"title": job.title or self.root.name, "price": job.price}
        self.job.update(endpoint=job.endpoint, endpoints=job.endpoints)
        self.remote = remote
        self.render_lock = asyncio.Lock()  # one page or report at a time (shared thumbnails)
        self._dirty = False
        self._writing: asyncio.Task[None] | None = None

    def allowed(self, request: web.Request) -> bool:
        given = request.query.get("token") or request.headers.get(TOKEN_HEADER)
        given = given or request.cookies.get(self.cookie) or ""
        return secrets.compare_digest(given.encode(), self.token.encode())

    async def page(self) -> str:
        last = await asyncio.to_thread(self.ledger.reviews.last_event)
        config = {"reviewer": self.reviewer, "last": last, "poll": POLL_MS}
        text = json.dumps(config, ensure_ascii=False)
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        script = _asset("review.js").replace("__REVIEW_CONFIG__", text, 1)
        extras = PageExtras(css=_asset("review.css"), script=script)
        async with self.render_lock:
            _report, page = await asyncio.to_thread(
                render_report, self.root, **self.job, extras=extras
            )
        return page

    # --- report.html, written again after decisions --------------------------------------

    def report_changed(self) -> None:
        """Write report.html again soon (once per burst of decisions)."""
        self._dirty = True
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write_reports())

    async def flush(self) -> None:
        """Wait until report.html shows every decision made so far."""
        while self._writing is not None and not self._writing.done():
            await asyncio.shield(self._writing)

    async def _write_reports(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                async with self.render_lock:
                    await asyncio.to_thread(write_report, self.root, **self.job)
            except Exception as exc:  # derived: the decisions are in the ledger
                log.warning("report.html not written: %s: %s", type(exc).__name__, exc)


def _state(request: web.Request) -> _Review:
    return request.app[_REVIEW]


_REVIEW = web.AppKey("review", _Review)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _host_ok(request: web.Request, review: _Review) -> bool:
    if review.remote:
        return True
    host = request.host
    if host.startswith("["):  # [::1]:port
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return is_loopback(host)


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return False
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    review = _state(request)
    if not _host_ok(request, review):
        return _error(403, "forbidden", "this server answers only on the loopback interface")
    if not review.allowed(request):
        return _error(403, "forbidden", "the review URL's token is missing or wrong")
    if request.method not in ("GET", "HEAD"):
        if not _same_origin(request):
            return _error(403, "forbidden", "writes are accepted only from the review page itself")
        if request.headers.get(WRITE_HEADER) != "1" or request.content_type != "application/json":
            return _error(
                403, "forbidden", f"writes need a JSON body and the {WRITE_HEADER} header"
            )
    if "token" in request.query and request.method == "GET":
        # The token becomes a cookie; the address bar and history keep the URL without it.
        query = {k: v for k, v in request.query.items() if k != "token"}
        where = str(request.rel_url.with_query(query))
        response = web.Response(status=302, headers={**_HEADERS, "Location": where})
        response.set_cookie(review.cookie, review.token, httponly=True, samesite="Strict", path="/")
        return response
    return await handler(request)


async def _index(request: web.Request) -> web.Response:
    page = await _state(request).page()
    return web.Response(text=page, content_type="text/html", charset="utf-8", headers=_HEADERS)


async def _file(request: web.Request) -> web.StreamResponse:
    review = _state(request)
    rel = PurePosixPath(request.match_info["path"])
    if rel.suffix.lower() not in IMAGE_SUFFIXES or any(
        part.startswith(".") or part == ".." for part in rel.parts
    ):
        raise web.HTTPNotFound()
    target = (review.root / rel).resolve()
    if not target.is_relative_to(review.root) or not target.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(target, headers={**_HEADERS, "Cache-Control": "private, max-age=60"})


_MAX_INT = 2**63 - 1


async def _list(request: web.Request) -> web.Response:
    review = _state(request)
    try:
        since = max(0, int(request.query.get("since", "0")))
        if since > _MAX_INT:
            raise ValueError(since)
    except ValueError:
        raise web.HTTPBadRequest(text="since: an integer") from None
    reviews = review.ledger.reviews

    def read() -> dict[str, Any]:
        last = reviews.last_event()
        found = reviews.decisions(since)
        last = max([last, *(d.event for d in found.values())])
        return {
            "last": last,
            "decisions": [d.as_dict() for d in found.values()],
            "counts": reviews.review_counts().as_dict(),
            "reviewer": review.reviewer,
        }

    return web.json_response(await asyncio.to_thread(read), headers=_HEADERS)


def _fields(body: Any) -> tuple[str, int, str, str | None, int]:
    """key, index, action, note, expected version of a POST; `ValueError` if malformed."""
    if not isinstance(body, dict):
        raise ValueError("a JSON object")
    key, index, action, note, version = (body.get(f) for f in ("k", "i", "action", "n", "v"))
    if not isinstance(key, str) or type(index) is not int or type(version) is not int:
        raise ValueError("k: the item's key, i: the output's index, v: the version seen")
    if not (0 <= index <= _MAX_INT and -1 <= version <= _MAX_INT):  # SQLite's integers
        raise ValueError("i and v: integers in range")
    if action not in ("approve", "reject", "note", "undo"):
        raise ValueError("action: approve, reject, note or undo")
    if not isinstance(note, str) and (note is not None or action == "note"):
        raise ValueError("n: the note, text")
    return key, index, action, note, version


async def _decide(request: web.Request) -> web.Response:
    review = _state(request)
    try:
        key, index, action, note, version = _fields(await request.json())
    except ValueError as exc:
        return _error(400, "bad-request", str(exc))
    reviews, who = review.ledger.reviews, review.reviewer

    def write() -> dict[str, Any]:
        if action == "undo":
            done = reviews.undo(key, index, reviewer=who, expect_version=version)
        elif action == "note":
            done = reviews.set_note(key, index, note or "", reviewer=who, expect_version=version)
        else:
            verdict = _VERDICTS[action]
            done = reviews.decide(key, index, verdict, note, reviewer=who, expect_version=version)
        counts = reviews.review_counts().as_dict()
        return {"decision": done.as_dict(), "counts": counts, "last": done.event}

    try:
        answer = await asyncio.to_thread(write)
    except ReviewConflictError as exc:
        return await _conflict(reviews, "conflict", str(exc), exc.current.as_dict())
    except NothingToUndoError as exc:
        current = await asyncio.to_thread(reviews.decision, key, index)
        return await _conflict(reviews, "nothing-to-undo", str(exc), current.as_dict())
    except UnknownOutputError as exc:
        return _error(404, "unknown-output", str(exc))
    except ValueError as exc:
        return _error(400, "bad-request", str(exc))
    except (sqlite3.OperationalError, BatchError) as exc:
        return _error(503, "ledger-busy", f"not saved, try again: {exc}")
    review.report_changed()
    return web.json_response(answer, headers=_HEADERS)


async def _conflict(
    reviews: Reviews, error: str, message: str, current: dict[str, Any]
) -> web.Response:
    counts = (await asyncio.to_thread(reviews.review_counts)).as_dict()
    body = {"error": error, "message": message, "current": current, "counts": counts}
    return web.json_response(body, status=409, headers=_HEADERS)


def _error(status: int, error: str, message: str) -> web.Response:
    body = {"error": error, "message": message}
    return web.json_response(body, status=status, headers=_HEADERS)


def review_app(
    output_dir: Path,
    token: str,
    reviewer: str,
    *,
    job: ReviewJob | None = None,
    remote: bool = False,
) -> web.Application:
    """The review server's app for `output_dir`, whose ledger must exist (`LedgerMissingError`
    otherwise); `reviewer` is whom its decisions are recorded as. The ledger is closed, and
    report.html written with the decisions made, when the app is cleaned up."""
    if len(token) < 16:
        raise ValueError("the token must be at least 16 characters")
    reviewer = check_reviewer(reviewer)
    ledger = Ledger.open(output_dir, create=False)
    review = _Review(ledger, token, reviewer, job or ReviewJob(), remote)
    app = web.Application(middlewares=[_guard], client_max_size=64 * 1024)
    app[_REVIEW] = review
    app.router.add_get("/", _index)
    app.router.add_get("/api/decisions", _list)
    app.router.add_post("/api/decisions", _decide)
    app.router.add_get("/{path:.+}", _file)

    async def close(_app: web.Application) -> None:
        try:
            await review.flush()
        finally:
            ledger.close()

    app.on_cleanup.append(close)
    return app


@dataclass(frozen=True, slots=True)
class Served:
    """A review server listening: the URL to open (with the token), and its app."""

    url: str
    app: web.Application

    async def flush(self) -> None:
        """Wait until report.html shows every decision made so far."""
        await self.app[_REVIEW].flush()


@asynccontextmanager
async def review_server(
    output_dir: Path,
    *,
    token: str,
    reviewer: str,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    job: ReviewJob | None = None,
) -> AsyncIterator[Served]:
    """Serve `review_app` on `host`:`port` (0: a free port); yields where (the URL to open has
    the token). A host that is not the loopback interface is refused (`RemoteHostError`) unless
    `allow_remote`: the token then travels over plain http."""
    if not allow_remote and not is_loopback(host):
        raise RemoteHostError(
            f"--host {host}: not the loopback interface; other machines could reach the review"
            " server (add --allow-remote if you mean it: the token travels over plain http)"
        )
    app = review_app(output_dir, token, reviewer, job=job, remote=allow_remote)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        yield Served(f"http://{shown}:{bound}/?token={token}", app)
    finally:
        await runner.cleanup()
