"""results.csv and results.jsonl, derived from the ledger (DESIGN invariant 4).

One row per item, in key order, streamed from a single read of `items LEFT JOIN outputs` (one
consistent snapshot, never the whole table in memory) into two files written atomically.
fal's error type and billable units (`X-Fal-Error-Type`, `X-Fal-Billable-Units`) are the last
columns, so the earlier ones keep their places.

results.csv is made safe to open in a spreadsheet (OWASP's CSV injection guidance): a text cell
that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading single quote, so
it is shown as text, never run as a formula. results.jsonl keeps every value exactly.
"""

from __future__ import annotations

import csv
import itertools
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batch.outputs.durable import atomic_writer
from batch.outputs.faults import host_faults

CSV_NAME = "results.csv"
JSONL_NAME = "results.jsonl"
FIELDS = (
    "key",
    "source",
    "endpoint",
    "state",
    "attempts",
    "request_id",
    "error_kind",
    "error_message",
    "seed",
    "possible_duplicate",
    "in_manifest",
    "prompt",
    "paths",
    "sha256s",
    "widths",
    "heights",
    "completed_at",
    "error_type",
    "billable_units",
    "recovered",
)
_LISTS = ("paths", "sha256s", "widths", "heights")
# A spreadsheet takes a cell starting with one of these as a formula (OWASP: CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_JSON = json.JSONEncoder(ensure_ascii=False)  # one encoder for every line, not one per call
_SQL = """
    SELECT i.key, i.source, i.endpoint, i.state, i.attempts, i.request_id, i.error_kind,
           i.error_message, i.seed, i.possible_duplicate, i.in_manifest, i.request,
           i.completed_at, o.path, o.sha256, o.width, o.height, i.error_type, i.billable_units,
           i.recovered
    FROM items AS i LEFT JOIN outputs AS o ON o.item_key = i.key
    ORDER BY i.key, o.idx
"""


@dataclass(frozen=True)
class ExportPaths:
    csv: Path
    jsonl: Path


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _prompt(request: str) -> str | None:
    try:
        payload = json.loads(request)
    except ValueError:
        return None
    prompt = payload.get("prompt") if isinstance(payload, dict) else None
    return prompt if isinstance(prompt, str) else None


def _records(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    cursor = conn.execute(_SQL)
    rows = iter(lambda: cursor.fetchmany(500), [])
    for _key, group in itertools.groupby(itertools.chain.from_iterable(rows), lambda r: r[0]):
        members = list(group)
        first = members[0]
        outs = members if first[13] is not None else []
        yield {
            "key": first[0],
            "source": first[1],
            "endpoint": first[2],
            "state": first[3],
            "attempts": first[4],
            "request_id": first[5],
            "error_kind": first[6],
            "error_message": first[7],
            "seed": first[8],
            "possible_duplicate": bool(first[9]),
            "in_manifest": bool(first[10]),
            "prompt": _prompt(first[11]),
            "paths": [r[13] for r in outs],
            "sha256s": [r[14] for r in outs],
            "widths": [r[15] for r in outs],
            "heights": [r[16] for r in outs],
            "completed_at": _iso(first[12]),
            "error_type": first[17],
            "billable_units": first[18],
            "recovered": bool(first[19]),
        }


def neutralise(cell: str) -> str:
    """A text cell a spreadsheet will not run as a formula: a single quote before a leading
    `=`, `+`, `-`, `@`, tab or carriage return (OWASP's CSV injection guidance)."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    row = dict(record)
    for name in _LISTS:
        row[name] = "|".join("" if v is None else str(v) for v in record[name])
    for name in ("possible_duplicate", "in_manifest", "recovered"):
        row[name] = "true" if record[name] else "false"
    for name, value in row.items():  # text only: numbers (a negative seed) stay numbers
        if isinstance(value, str):
            row[name] = neutralise(value)
    return row


def export_results(db_path: Path, dest_dir: Path) -> ExportPaths:
    """Write `results.csv` and `results.jsonl` in `dest_dir` from the ledger at `db_path`.

    Uses its own connection, so it may run in a thread while the ledger is being written.
    """
    with host_faults(dest_dir, action="create"):
        dest_dir.mkdir(parents=True, exist_ok=True)
    paths = ExportPaths(dest_dir / CSV_NAME, dest_dir / JSONL_NAME)
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("BEGIN")  # one snapshot for the whole export
        with (
            atomic_writer(paths.csv) as csv_fh,
            atomic_writer(paths.jsonl, newline="\n") as jsonl_fh,
        ):
            # Every record has exactly FIELDS: no need for DictWriter to look for extra keys.
            writer = csv.DictWriter(
                csv_fh, fieldnames=FIELDS, lineterminator="\n", extrasaction="ignore"
            )
            writer.writeheader()
            for record in _records(conn):
                writer.writerow(_csv_row(record))
                jsonl_fh.write(_JSON.encode(record) + "\n")
        conn.execute("COMMIT")
    finally:
        conn.close()
    return paths
