"""CSV and JSONL manifests → a stream of raw rows (``Row``) and problems, one row at a time.

CSV: a header row, then one item per row (RFC 4180: quoted cells may hold commas, quotes and
newlines; a row's line is the line where it starts). Columns: ``id`` (optional), ``prompt``,
``image_urls`` (or ``image_url`` / ``images``) split on ``|``, and any other input field. An
empty or missing cell means "use the default"; a column the endpoint does not take is an error
on the header line. Cells are trimmed, except ``prompt`` and
``negative_prompt``, which are kept verbatim. Values stay strings: pydantic converts them by
the field's type (``42``, ``4.5``, ``true/false/1/0/yes/no``); ``image_size`` takes a preset,
``WIDTHxHEIGHT`` or a JSON object.

JSONL: one JSON object per line, the request body plus an optional ``id``; blank lines are
skipped.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from batch.manifest.errors import Problem
from batch.manifest.fields import FIELDS, IMAGE_ALIASES, IMAGE_FIELD
from batch.manifest.localfiles import LocalFiles


class Row(NamedTuple):
    """One item as written in the file, before defaults and validation."""

    line: int
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Defaults:
    """Defaults declared by the manifest itself (YAML ``defaults:``), already checked."""

    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReadContext:
    base_dir: Path  # the manifest's folder, for relative image paths
    defaults: Mapping[str, Any] = field(default_factory=dict)  # the job's defaults
    files: LocalFiles | None = None  # where local images are read and registered


Event = Row | Problem | Defaults

VERBATIM = frozenset({"prompt", "negative_prompt"})


def _decode(raw: bytes, number: int) -> str:
    if number == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    return raw.decode("utf-8")


def _first_line(fh: BinaryIO) -> Iterator[str]:
    raw = fh.readline()
    if raw:
        yield _decode(raw, 1)


def _lines(fh: BinaryIO) -> Iterator[str]:
    """The file's lines for csv.reader, decoded one at a time (not by buffer), so that a UTF-8
    error is raised on its exact line; csv.reader's ``line_num`` counts the lines taken."""
    return itertools.chain(_first_line(fh), map(bytes.decode, fh))


def _images_cell(text: str) -> list[str]:
    if "|" not in text:
        return [text]
    return [part.strip() for part in text.split("|")]


def _size_cell(text: str) -> Any:
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text  # reported as a bad image_size
    return text


# Cells that are not merely trimmed: converted from the trimmed text.
_CELLS: dict[str, Callable[[str], Any]] = {IMAGE_FIELD: _images_cell, "image_size": _size_cell}
_SPECIAL = VERBATIM | _CELLS.keys()


def _plan_columns(
    header: list[str], line: int, ctx: ReadContext
) -> tuple[list[str | None], list[Problem]]:
    """The field each column feeds (None: ignored), and the header's problems."""
    columns: list[str | None] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for number, raw in enumerate(header, 1):
        name = raw.strip()
        target: str | None = IMAGE_FIELD if name in IMAGE_ALIASES else name
        if not name:
            problems.append(Problem(line, (), f"column {number} has no name (ignored)", "warning"))
            target = None
        elif target != "id" and target not in FIELDS:
            problems.append(Problem(line, (name,), "unknown field"))
            target = None
        elif target in seen:
            why = "duplicate column" if seen[target] == name else f"conflicts with {seen[target]}"
            problems.append(Problem(line, (name,), why))
            target = None
        else:
            seen[target] = name
        columns.append(target)
    for needed in ("prompt", IMAGE_FIELD):
        if needed not in seen and needed not in ctx.defaults:
            why = f"no '{needed}' column (and no default {needed})"
            problems.append(Problem(line, (), why, "fatal"))
    return columns, problems


def read_csv(path: Path, ctx: ReadContext) -> Iterator[Event]:
    with path.open("rb") as fh:
        reader = csv.reader(_lines(fh), strict=True)
        columns: list[str | None] | None = None
        # Cells that are not merely trimmed: kept as they are (VERBATIM), or converted (_CELLS).
        special: list[tuple[int, str, Callable[[str], Any] | None]] = []
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Problem(start, (), f"CSV error: {exc}", "fatal")
                return
            except UnicodeDecodeError as exc:
                why = f"not valid UTF-8 (byte {exc.start + 1} of the line)"
                yield Problem(reader.line_num + 1, (), why, "fatal")
                return
            trimmed = list(map(str.strip, cells))
            if not any(trimmed):
                continue  # blank line, or a row of empty cells
            if columns is None:
                columns, problems = _plan_columns(cells, start, ctx)
                yield from problems
                if any(p.kind == "fatal" for p in problems):
                    return
                special = [(i, c, _CELLS.get(c)) for i, c in enumerate(columns) if c in _SPECIAL]
                continue
            if len(cells) > len(columns):
                why = f"row has {len(cells)} cells, the header has {len(columns)}"
                yield Problem(start, (), why)
                continue
            # a short row leaves the last columns empty
            data = {c: text for c, text in zip(columns, trimmed) if c and text}  # noqa: B905
            for index, column, convert in special:
                if column in data:
                    data[column] = cells[index] if convert is None else convert(data[column])
            yield Row(start, data)


def read_jsonl(path: Path, ctx: ReadContext) -> Iterator[Event]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                line = _decode(raw, number)
            except UnicodeDecodeError as exc:
                yield Problem(number, (), f"not valid UTF-8 (byte {exc.start + 1} of the line)")
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield Problem(number, (), f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(value, dict):
                yield Problem(number, (), "expected a JSON object")
                continue
            yield Row(number, value)
