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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from batch.ledger.models import canonical_json, hash_canonical

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
) -> list[tuple[str, str]]:
    """New items for the `rejected` item keys; (redo, original) pairs. Runs in the caller's
    transaction."""
    made: list[tuple[str, str]] = []
    now = time.time()
    for key in rejected:
        if _redone(conn, key):
            continue
        row = conn.execute(
            "SELECT source, endpoint, request FROM items WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            continue
        source, endpoint, request = row
        base = _original(conn, key)
        n = _next_number(conn, base)
        payload = Change.apply(change, json.loads(request), base, n)
        text = canonical_json(payload)
        redo = f"{base}~redo{n}"
        conn.execute(
            _INSERT,
            (redo, source, endpoint, text, hash_canonical(endpoint, text), now, now, key),
        )
        made.append((redo, key))
    return made


def _redone(conn: sqlite3.Connection, key: str) -> bool:
    """Whether `key` has a redo already (a rejected redo is redone itself, not its original)."""
    return (
        conn.execute("SELECT 1 FROM items WHERE redo_of = ? LIMIT 1", (key,)).fetchone() is not None
    )


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
