"""`LedgerTransitions`: an item's changes of state (`Ledger` inherits them).

Each transition is one short transaction (it joins a `Ledger.group` when inside one), checks
before it writes, and raises `UnknownItemError` / `InvalidTransitionError` when its UPDATE
matched no row, so a transition that raised has written nothing.

Besides its kind and message, a failure keeps fal's error type (`X-Fal-Error-Type` /
`error_type`), and a completion fal's billable units (`X-Fal-Billable-Units`), when the caller
has them (migration m006). The error type lives and is cleared with the error kind.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from batch.crashpoints import crashpoint
from batch.ledger.models import (
    InvalidTransitionError,
    ItemState,
    UnknownItemError,
    canonical_json,
)
from batch.ledger.plan import LOOKUP, chunked
from batch.outputs.naming import OutputRecord, check_output_path

# Failures after fal's request succeeded: `retry` re-attaches to the request (DESIGN inv. 3).
REATTACH_KINDS = ("download",)
_P, _S = ItemState.pending, ItemState.submitted
# A try is counted when it is submitted, or when it fails before it got that far.
_COUNT_UNSUBMITTED_TRY = "attempts = attempts + (state = 'pending')"


@functools.cache
def _update_sql(assignments: str, allowed: int) -> str:
    """A transition's UPDATE (built once per kind: transitions run hundreds of times a second)."""
    marks = ", ".join("?" * allowed)
    return (
        f"UPDATE items SET {assignments}, updated_at = ?, run_id = COALESCE(?, run_id)"
        f" WHERE key = ? AND state IN ({marks})"
    )


def _units(value: float | None) -> float | None:
    """Billable units as stored: a finite number ≥ 0, else None (spend then uses the
    estimate: a result is never refused for an odd header)."""
    if value is None:
        return None
    try:
        units = float(value)
    except (TypeError, ValueError):
        return None
    return units if math.isfinite(units) and units >= 0 else None


class LedgerTransitions:
    """Item transitions; a base of `batch.ledger.store.Ledger`, which owns the connection, its
    lock, the clock, the run id and `_tx` (a transaction that joins a `Ledger.group`)."""

    _conn: sqlite3.Connection
    _lock: threading.RLock
    _clock: Callable[[], float]
    _tx: Callable[[], AbstractContextManager[sqlite3.Connection]]
    run_id: int | None

    def _update(
        self,
        conn: sqlite3.Connection,
        key: str,
        action: str,
        allowed: Sequence[ItemState],
        assignments: str,
        params: Sequence[Any] = (),
    ) -> None:
        sql = _update_sql(assignments, len(allowed))
        cur = conn.execute(sql, (*params, self._clock(), self.run_id, key, *allowed))
        if cur.rowcount == 0:
            row = conn.execute("SELECT state FROM items WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise UnknownItemError(key)
            raise InvalidTransitionError(key, row[0], action)

    def mark_submitted(
        self,
        key: str,
        request_id: str,
        status_url: str | None,
        response_url: str | None,
        cancel_url: str | None,
        *,
        possible_duplicate: bool = False,
        recovered: bool = False,
    ) -> None:
        """pending → submitted, attempts + 1. Commit this before awaiting anything else.
        `recovered`: the request was found in fal's request history after its submit's answer
        was lost (`batch.pipeline.recovery`). The request id is kept in `requests` for good."""
        with self._tx() as conn:
            now = self._clock()
            self._update(
                conn,
                key,
                "mark it submitted",
                (_P,),
                "state = 'submitted', attempts = attempts + 1, request_id = ?, status_url = ?,"
                " response_url = ?, cancel_url = ?, possible_duplicate = possible_duplicate OR ?,"
                " recovered = recovered OR ?, not_before = NULL, submitted_at = ?,"
                " submit_started_at = NULL, sent_payload = NULL",
                (
                    request_id,
                    status_url,
                    response_url,
                    cancel_url,
                    possible_duplicate,
                    recovered,
                    now,
                ),
            )
            conn.execute(
                "INSERT OR IGNORE INTO requests (request_id, item_key, endpoint, submitted_at)"
                " SELECT ?, key, endpoint, ? FROM items WHERE key = ?",
                (request_id, now, key),
            )

    def mark_completed(
        self,
        key: str,
        outputs: Sequence[OutputRecord],
        *,
        seed: int | None,
        timings: Mapping[str, Any] | None,
        nsfw: Sequence[bool] | None,
        billable_units: float | None = None,
    ) -> None:
        """submitted → completed, with its output records, in one transaction. Call it only
        when every file is on disk (written, fsynced, renamed). `billable_units`: fal's
        `X-Fal-Billable-Units` of the result, if it sent them (spend is counted from them);
        a value that is not a finite number ≥ 0 is stored as None. The error is cleared."""
        indexes = [o.index for o in outputs]
        if len(set(indexes)) != len(indexes):
            raise ValueError(f"duplicate output index for item {key!r}: {indexes}")
        for out in outputs:
            check_output_path(out.path)  # ValueError for absolute or `..` paths
        rows = [
            (key, o.index, o.path, o.url, o.bytes, o.sha256, o.width, o.height, o.content_type)
            for o in outputs
        ]
        with self._tx() as conn:
            self._update(
                conn,
                key,
                "mark it completed",
                (_S,),
                "state = 'completed', seed = ?, timings = ?, nsfw = ?, completed_at = ?,"
                " billable_units = ?, error_kind = NULL, error_message = NULL,"
                " error_type = NULL, not_before = NULL",
                (
                    seed,
                    None if timings is None else canonical_json(dict(timings)),
                    None if nsfw is None else json.dumps([bool(x) for x in nsfw]),
                    self._clock(),
                    _units(billable_units),
                ),
            )
            conn.execute("DELETE FROM outputs WHERE item_key = ?", (key,))
            conn.executemany(
                "INSERT INTO outputs (item_key, idx, path, url, bytes, sha256, width, height,"
                " content_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            crashpoint("ledger")  # inside the transaction: a crash here must roll it back

    def mark_failed(
        self, key: str, kind: str, message: str, *, error_type: str | None = None
    ) -> None:
        """pending/submitted → failed for good (until `reset_to_pending`); request_id kept.
        `error_type`: fal's `X-Fal-Error-Type` / `error_type` of the answer, if any."""
        with self._tx() as conn:
            self._update(
                conn,
                key,
                "mark it failed",
                (_P, _S),
                f"state = 'failed', {_COUNT_UNSUBMITTED_TRY}, error_kind = ?, error_message = ?,"
                " error_type = ?, not_before = NULL, submit_started_at = NULL, sent_payload = NULL",
                (kind, message, error_type),
            )

    def mark_retry(
        self,
        key: str,
        kind: str,
        message: str,
        not_before: float | None,
        *,
        error_type: str | None = None,
    ) -> None:
        """pending/submitted → pending, not before `not_before` (epoch seconds). The request
        id and URLs are cleared: the next try is a new submit. `error_type` as `mark_failed`."""
        with self._tx() as conn:
            self._update(
                conn,
                key,
                "retry it",
                (_P, _S),
                f"state = 'pending', {_COUNT_UNSUBMITTED_TRY}, error_kind = ?, error_message = ?,"
                " error_type = ?, not_before = ?, request_id = NULL, status_url = NULL,"
                " response_url = NULL, cancel_url = NULL, submit_started_at = NULL,"
                " sent_payload = NULL",
                (kind, message, error_type, not_before),
            )

    def mark_submitting(
        self, key: str, sending: bool = True, *, payload: Mapping[str, Any] | None = None
    ) -> None:
        """Record (or clear) that a submit of this pending item is on its way to fal, with what
        it carries (`payload`, after uploads). A run that dies before `mark_submitted` leaves
        both set: the next run looks for the request in fal's history instead of assuming fal
        never saw it."""
        sent = None if payload is None or not sending else canonical_json(dict(payload))
        with self._tx() as conn:
            self._update(
                conn,
                key,
                "record a submit",
                (_P,),
                "submit_started_at = ?, sent_payload = ?",
                (self._clock() if sending else None, sent),
            )

    def mark_announced(self, announced: Mapping[str, tuple[float, Any]]) -> int:
        """Items that a lost copy of this ledger may have sent (object storage's journal named
        them before their submits, `announced`: key → (when, the payload sent if uploads
        changed it)): a pending one with no request id is taken as a submit on its way since
        then, so the run looks for it in fal's history before sending it again. How many."""
        marked = 0
        with self._tx() as conn:
            for key, (at, payload) in announced.items():
                sent = None if payload is None else canonical_json(payload)
                marked += conn.execute(
                    "UPDATE items SET submit_started_at = ?, sent_payload = ? WHERE key = ?"
                    " AND state = 'pending' AND request_id IS NULL AND submit_started_at IS NULL",
                    (at, sent, key),
                ).rowcount
        return marked

    def reattach_completed(self, keys: Iterable[str]) -> int:
        """Completed items whose images were lost (a shard restored on a new disk, its images
        never uploaded): back to `submitted`, their outputs forgotten, so the run fetches the
        paid-for result again instead of submitting again. How many."""
        total = 0
        for part in chunked(list(keys), LOOKUP):
            marks = ", ".join("?" * len(part))
            with self._tx() as conn:
                conn.execute(f"DELETE FROM outputs WHERE item_key IN ({marks})", part)
                total += conn.execute(
                    f"UPDATE items SET state = 'submitted', completed_at = NULL, updated_at = ?"
                    f" WHERE state = 'completed' AND request_id IS NOT NULL AND key IN ({marks})",
                    [self._clock(), *part],
                ).rowcount
        return total

    def set_pilot(self, keys: Iterable[str]) -> int:
        """Mark items as a pilot's sample (they stay marked: `status` and the report show
        them); how many were not marked yet."""
        marked = 0
        with self._tx() as conn:
            for part in chunked(list(keys), LOOKUP):
                marks = ",".join("?" * len(part))
                marked += conn.execute(
                    f"UPDATE items SET pilot = 1 WHERE pilot = 0 AND key IN ({marks})", part
                ).rowcount
        return marked

    def mark_ambiguous(self, key: str) -> None:
        """Flag that a submit of this item may have been queued without us knowing."""
        with self._tx() as conn:
            self._update(conn, key, "flag a possible duplicate", (_P, _S), "possible_duplicate = 1")

    def reset_to_pending(
        self,
        keys: Iterable[str] | None = None,
        *,
        kind: str | None = None,
        reattach_kinds: Iterable[str] = REATTACH_KINDS,
    ) -> int:
        """Failed items get another go, for `retry`: the given keys, or all failed items (of
        one error kind, if given), with attempts reset and the error cleared. Returns how many.

        An item that failed with a kind in `reattach_kinds` (by default `download`: fal's
        request succeeded, only fetching its images failed) and still has its request id goes
        back to `submitted`, so the run re-attaches to the paid-for request instead of
        submitting again; every other item goes back to `pending` without a request id.
        """
        kinds = sorted(set(reattach_kinds))
        where = "state = 'failed'"
        filters: list[Any] = []
        if kind is not None:
            where += " AND error_kind = ?"
            filters.append(kind)
        if keys is None:
            with self._tx() as conn:
                return self._reset(conn, where, filters, kinds)
        total = 0
        for part in chunked(keys, LOOKUP):
            marks = ", ".join("?" * len(part))
            with self._tx() as conn:
                total += self._reset(
                    conn, f"{where} AND key IN ({marks})", [*filters, *part], kinds
                )
        return total

    def _reset(
        self, conn: sqlite3.Connection, where: str, filters: list[Any], kinds: list[str]
    ) -> int:
        common = (
            "attempts = 0, error_kind = NULL, error_message = NULL, error_type = NULL,"
            " not_before = NULL, updated_at = ?, run_id = COALESCE(?, run_id)"
        )
        stamp = [self._clock(), self.run_id]
        marks = ", ".join("?" * len(kinds))
        reattach = f"request_id IS NOT NULL AND error_kind IN ({marks})"
        count = conn.execute(
            f"UPDATE items SET state = 'submitted', {common} WHERE {where} AND {reattach}",
            [*stamp, *filters, *kinds],
        ).rowcount
        count += conn.execute(
            f"UPDATE items SET state = 'pending', {common}, request_id = NULL, status_url = NULL,"
            f" response_url = NULL, cancel_url = NULL WHERE {where}",
            [*stamp, *filters],
        ).rowcount
        return count
