"""Redo of rejected outputs (`retry --rejected`): a new item per rejected one, linked to it.

The rejected item keeps its outputs and its decisions, approved ones included: nothing of it
changes (the report shows it and its redo side by side). The redo is a new item
``<key>~redo<n>`` (``redo_of`` = the key it redoes), pending, with the same endpoint and the
request changed as asked: a new seed, another prompt, or a suffix to it. An item is redone
once: a rejected redo is redone in its turn (``~redo2``).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from batch.errors import InvalidInputError
from batch.ledger.models import canonical_json, hash_canonical
from batch.schema import EditInput

_INSERT = """
    INSERT INTO items (key, source, endpoint, request, request_hash, state, attempts,
                       created_at, updated_at, in_manifest, redo_of)
    VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, 1, ?)
"""


@dataclass(frozen=True)
class Change:
    """What a redo changes in the request."""

    new_seed: bool = False
    prompt: str | None = None
    prompt_suffix: str | None = None

    def apply(self, payload: dict[str, Any], key: str, n: int) -> dict[str, Any]:
        changed = dict(payload)
        if self.new_seed:  # deterministic, so that the same redo asks for the same request
            digest = hashlib.sha256(f"{key}:redo:{n}".encode()).digest()
            changed["seed"] = int.from_bytes(digest[:4], "big") % 2**31
        if self.prompt is not None:
            changed["prompt"] = self.prompt
        if self.prompt_suffix:
            changed["prompt"] = f"{changed.get('prompt', '')} {self.prompt_suffix}".strip()
        return changed


def redo_rejected(
    conn: sqlite3.Connection, rejected: Iterable[str], change: Change
) -> list[tuple[str, str, bool]]:
    """New items for the `rejected` item keys: (redo, original, False) each. A redo not sent
    yet is changed instead, when `change` asks for something: (redo, original, True). A redo
    that failed does not count: the item is redone again. Every new request is validated
    first (`RedoError`, exit 2: nothing changes). Runs in the caller's transaction."""
    made: list[tuple[str, str, bool]] = []
    now = time.time()
    for key in rejected:
        row = conn.execute(
            "SELECT source, endpoint, request FROM items WHERE key = ?", (key,)
        ).fetchone()
        waiting = _unsent_redo(conn, key)
        if row is None or (waiting is None and _redone(conn, key)):
            continue
        if waiting is not None and change == Change():
            continue  # nothing new to ask of the redo already waiting
        source, endpoint, request = row
        base = _original(conn, key)
        n = _next_number(conn, base) if waiting is None else int(waiting.rpartition("~redo")[2])
        payload = Change.apply(change, json.loads(request), base, n)
        _check(key, payload)
        text = canonical_json(payload)
        digest = hash_canonical(endpoint, text)
        if waiting is not None:
            conn.execute(
                "UPDATE items SET request = ?, request_hash = ?, updated_at = ? WHERE key = ?",
                (text, digest, now, waiting),
            )
            made.append((waiting, key, True))
            continue
        redo = f"{base}~redo{n}"
        conn.execute(_INSERT, (redo, source, endpoint, text, digest, now, now, key))
        made.append((redo, key, False))
    return made


def drop_unwanted(conn: sqlite3.Connection, rejected: Collection[str]) -> list[str]:
    """Redos not sent yet whose original is no longer rejected (approved since, or the
    decision undone): removed, so that a run does not pay for them. Their keys."""
    rows = conn.execute(
        f"SELECT key, redo_of FROM items WHERE redo_of IS NOT NULL AND {_UNSENT}"
    ).fetchall()
    dropped = [key for key, original in rows if original not in rejected]
    for key in dropped:
        conn.execute(f"DELETE FROM items WHERE key = ? AND {_UNSENT}", (key,))
    return dropped


class RedoError(InvalidInputError):
    """A redo whose request would be invalid; exit 2, nothing changed."""


def _check(key: str, payload: dict[str, Any]) -> None:
    try:
        EditInput.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RedoError(f"redo of {key}: {where}: {first['msg']}") from None


_UNSENT = "state = 'pending' AND request_id IS NULL AND submit_started_at IS NULL"


def _unsent_redo(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute(
        f"SELECT key FROM items WHERE redo_of = ? AND {_UNSENT} LIMIT 1", (key,)
    ).fetchone()
    return None if row is None else str(row[0])


def _redone(conn: sqlite3.Connection, key: str) -> bool:
    """Whether `key` has a redo that did not fail (a rejected redo is redone itself, not its
    original)."""
    found = conn.execute(
        "SELECT 1 FROM items WHERE redo_of = ? AND state != 'failed' LIMIT 1", (key,)
    ).fetchone()
    return found is not None


def _original(conn: sqlite3.Connection, key: str) -> str:
    """The item a chain of redos started from (`key` itself when it is no redo)."""
    seen = {key}
    while row := conn.execute("SELECT redo_of FROM items WHERE key = ?", (key,)).fetchone():
        if row[0] is None or row[0] in seen:
            break
        key = row[0]
        seen.add(key)
    return key


def _next_number(conn: sqlite3.Connection, base: str) -> int:
    """One more than the highest ``<base>~redo<n>`` there is (a range of the key index)."""
    prefix = f"{base}~redo"
    rows = conn.execute(
        "SELECT key FROM items WHERE key > ? AND key < ?", (prefix, f"{base}~redp")
    ).fetchall()
    tails = (key[len(prefix) :] for (key,) in rows)
    return max((int(t) for t in tails if t.isascii() and t.isdigit()), default=0) + 1
