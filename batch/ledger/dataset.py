"""The ledger's completed outputs as dataset records, and their inputs found on disk.

`records_from_ledger` streams one `DatasetRecord` per output image of the completed items (all,
or the keys or (key, output index) pairs asked for: e.g. the accepted ones), in key and index
order, from one consistent snapshot read through a connection of its own. `ledger_inputs` finds
the bytes of a ``local:sha256:<hex>`` input: the file the ledger last read with that content
(`local_files`), if it is still as it was then (size and mtime); other references go to
`batch.outputs.dataset.resolve_input` (``data:`` URIs' bytes; URLs kept, never fetched).
`export_ledger_dataset` is both with `batch.outputs.dataset.export_dataset`: what the CLI calls.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Generator, Iterable, Mapping
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from batch.ledger.faults import ledger_faults
from batch.ledger.models import redact
from batch.ledger.store import Ledger
from batch.manifest.localfiles import LocalFile, local_sha
from batch.outputs.dataset import (
    SHARD_BYTES,
    SHARD_SIZE,
    DatasetError,
    DatasetRecord,
    ExportSummary,
    InputSource,
    Resolver,
    export_dataset,
    resolve_input,
)
from batch.outputs.naming import output_path

# Request fields that the record holds on its own; the others go to its `metadata`.
_OWN_FIELDS = frozenset({"prompt", "image_urls", "image_url", "images", "seed"})
_ALL = -1  # `wanted.idx` for every output of a key
_SQL = """
    SELECT i.key, i.endpoint, i.request, i.seed, o.idx, o.path, o.sha256, o.bytes
    FROM items AS i JOIN outputs AS o ON o.item_key = i.key
    WHERE i.state = 'completed' {only}
    ORDER BY i.key, o.idx
"""
_ONLY = "AND EXISTS (SELECT 1 FROM temp.wanted AS w WHERE w.key = i.key AND w.idx IN (-1, o.idx))"


class ReviewLike(Protocol):
    """What a record takes from a review (`batch.ledger.reviews.Decision`)."""

    @property
    def note(self) -> str: ...

    @property
    def reviewer(self) -> str | None: ...


def records_from_ledger(
    ledger: Ledger,
    output_dir: Path | None = None,
    keys: Iterable[str] | None = None,
    *,
    outputs: Iterable[tuple[str, int]] | None = None,
) -> Generator[DatasetRecord, None, None]:
    """One record per output image of each completed item, in key and index order.

    With `keys` and/or `outputs` ((key, output index) pairs), only those; asked-for keys that
    are not completed items are skipped. Output paths are under `output_dir` (the ledger's
    folder by default). Reads through its own connection, in one snapshot, a chunk at a time."""
    folder = ledger.output_dir if output_dir is None else output_dir
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        only = ""
        if keys is not None or outputs is not None:
            _want(conn, keys or (), outputs or ())
            only = _ONLY
        conn.execute("BEGIN")  # one snapshot for the whole export
        cursor = conn.execute(_SQL.format(only=only))
        while rows := cursor.fetchmany(500):
            for key, endpoint, request, seed, idx, rel, sha, size in rows:
                yield _record(folder, key, endpoint, request, seed, idx, rel, sha, size)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _want(
    conn: sqlite3.Connection, keys: Iterable[str], outputs: Iterable[tuple[str, int]]
) -> None:
    conn.execute(
        "CREATE TEMP TABLE wanted (key TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (key, idx))"
    )
    sql = "INSERT OR IGNORE INTO temp.wanted (key, idx) VALUES (?, ?)"
    conn.executemany(sql, ((key, _ALL) for key in keys))
    conn.executemany(sql, ((key, int(idx)) for key, idx in outputs))


def _record(
    folder: Path,
    key: str,
    endpoint: str,
    request: str,
    seed: int | None,
    idx: int,
    rel: str,
    sha: str,
    size: int,
) -> DatasetRecord:
    payload = json.loads(request)
    if not isinstance(payload, dict):
        payload = {}
    prompt = payload.get("prompt")
    requested_seed = payload.get("seed")
    rest = {k: v for k, v in payload.items() if k not in _OWN_FIELDS}
    return DatasetRecord(
        key=key,
        instruction=prompt if isinstance(prompt, str) else "",
        inputs=tuple(_input_refs(payload)),
        output=_output(folder, key, rel),
        output_index=idx,
        seed=seed if seed is not None or not isinstance(requested_seed, int) else requested_seed,
        endpoint=endpoint,
        output_sha256=sha,
        output_bytes=size,
        metadata=redact(rest) if rest else None,
    )


def _output(folder: Path, key: str, rel: str) -> Path:
    try:
        return output_path(folder, rel)
    except ValueError:
        raise DatasetError(
            f"the ledger names an unsafe output path for {key!r}: {rel!r} (`firered-batch doctor`)"
        ) from None


def _input_refs(payload: Mapping[str, Any]) -> list[str]:
    urls = payload.get("image_urls")
    if isinstance(urls, list):
        return [u for u in urls if isinstance(u, str)]
    url = payload.get("image_url")
    return [url] if isinstance(url, str) else []


def ledger_inputs(ledger: Ledger) -> Resolver:
    """A resolver that finds ``local:sha256:<hex>`` inputs among the files the ledger read
    (still unchanged), and leaves everything else to `resolve_input`."""
    by_sha: dict[str, list[LocalFile]] = {}
    for known in ledger.uploads.known_files().values():
        by_sha.setdefault(known.sha256, []).append(known)

    def resolve(ref: str) -> InputSource:
        sha = local_sha(ref)
        if sha is None:
            return resolve_input(ref)
        for known in by_sha.get(sha, ()):
            if _unchanged(known):
                return InputSource(path=Path(known.path), sha256=sha)
        return InputSource(sha256=sha)  # read once, since moved or changed: not available

    return resolve


def _unchanged(known: LocalFile) -> bool:
    try:
        st = os.stat(known.path)
    except OSError:
        return False
    return st.st_size == known.size and st.st_mtime_ns == known.mtime_ns


def export_ledger_dataset(
    ledger: Ledger,
    dest: Path,
    fmt: str,
    *,
    keys: Iterable[str] | None = None,
    outputs: Iterable[tuple[str, int]] | None = None,
    reviews: Mapping[tuple[str, int], ReviewLike] | None = None,
    shard_size: int = SHARD_SIZE,
    shard_bytes: int = SHARD_BYTES,
    overwrite: bool = False,
) -> ExportSummary:
    """`export_dataset` of `records_from_ledger(ledger, keys=keys, outputs=outputs)` with the
    ledger's local input files; each output's `reviews[(key, index)]` gives its note and
    reviewer (e.g. ``ledger.reviews.decisions()``)."""
    rows = records_from_ledger(ledger, keys=keys, outputs=outputs)
    records: Iterable[DatasetRecord] = rows
    if reviews is not None:
        records = (_reviewed(record, reviews) for record in rows)
    with ledger_faults(ledger.path), closing(rows):  # its connection closed, however it ends
        return export_dataset(
            records,
            dest,
            fmt,
            shard_size=shard_size,
            shard_bytes=shard_bytes,
            resolve_input=ledger_inputs(ledger),
            overwrite=overwrite,
        )


def _reviewed(
    record: DatasetRecord, reviews: Mapping[tuple[str, int], ReviewLike]
) -> DatasetRecord:
    review = reviews.get((record.key, record.output_index))
    if review is None:
        return record
    return replace(record, note=review.note or None, reviewer=review.reviewer)
