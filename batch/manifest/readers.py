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
skipped. A key given twice in an object, values nested deeper than `MAX_DEPTH`, ``NaN`` or
``Infinity`` and integers of more digits than Python converts are refused with their line (see
`parse_json`). An empty file, or a CSV file with a header and no rows, is an error too.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from batch.manifest.errors import (
    MAX_DEPTH,
    NOT_FINITE,
    InvalidValue,
    Problem,
    too_many_digits,
)
from batch.manifest.fields import FIELDS, IMAGE_ALIASES, IMAGE_FIELD
from batch.manifest.localfiles import LocalFiles
from batch.manifest.yamlfile import encoding_problem


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
EMPTY = "file is empty"
# A JSON string, or one bracket: what nesting depth is counted from (strings may hold brackets).
_JSON_TOKEN_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class JsonValueError(ValueError):
    """JSON that parses but cannot be used: ``loc`` (a key's path, or empty) and the reason."""

    def __init__(self, loc: tuple[str, ...], reason: str) -> None:
        super().__init__(reason)
        self.loc = loc
        self.reason = reason


def _too_deep(text: str) -> bool:
    """Whether the JSON text nests arrays and objects deeper than `MAX_DEPTH` (counted
    without parsing, so that no parser recurses on it)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False  # the common case: a few brackets, nothing to count
    depth = 0
    for match in _JSON_TOKEN_RE.finditer(text):
        token = match[0]
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif token in "]}":
            depth -= 1
    return False


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonValueError((key,), "duplicate key")
            seen.add(key)
    return value


def _not_finite(_: str) -> InvalidValue:
    return InvalidValue(NOT_FINITE)


def _big_int(text: str) -> int | InvalidValue:
    try:
        return int(text)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        return too_many_digits(len(text.lstrip("-")))


_DECODE = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_not_finite).decode
_DECODE_BIG_INTS = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_constant=_not_finite, parse_int=_big_int
).decode


def parse_json(text: str) -> Any:
    """``json.loads`` for one row or cell, refusing what cannot be used: `JsonValueError` for
    nesting deeper than `MAX_DEPTH` or a duplicate key; ``NaN``, ``Infinity`` and integers of
    too many digits become an `InvalidValue` at their place. `json.JSONDecodeError` as usual."""
    if _too_deep(text):
        raise JsonValueError((), f"nested deeper than {MAX_DEPTH} levels")
    try:
        return _DECODE(text)  # made once: json.loads with hooks makes a decoder per call
    except (json.JSONDecodeError, JsonValueError):
        raise
    except RecursionError:  # not expected past `_too_deep`; never a crash
        raise JsonValueError((), f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # an integer of more digits than int() converts: mark it in its place
        return _DECODE_BIG_INTS(text)


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
            return parse_json(text)
        except json.JSONDecodeError:
            return text  # reported as a bad image_size
        except JsonValueError as exc:
            where = ".".join(exc.loc)
            return InvalidValue(f"{where}: {exc.reason}" if where else exc.reason)
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


def _next_row(reader: Any) -> list[str] | Problem | None:
    """The next record of a csv.reader, None at the end, or the fatal problem that ends it."""
    start = reader.line_num + 1
    try:
        cells: list[str] = next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        return Problem(start, (), f"CSV error: {exc}", "fatal")
    except UnicodeDecodeError as exc:
        why = f"not valid UTF-8 (byte {exc.start + 1} of the line)"
        return Problem(reader.line_num + 1, (), why, "fatal")
    return cells


def read_csv(path: Path, ctx: ReadContext) -> Iterator[Event]:
    with path.open("rb") as fh:
        other = encoding_problem(fh.peek(4)[:4])
        if other is not None:
            yield Problem(1, (), other, "fatal")
        else:
            yield from _csv_events(fh, ctx)


def _csv_events(fh: BinaryIO, ctx: ReadContext) -> Iterator[Event]:
    reader = csv.reader(_lines(fh), strict=True)
    columns: list[str | None] | None = None
    header_line = rows = 0
    # Cells that are not merely trimmed: kept as they are (VERBATIM), or converted (_CELLS).
    special: list[tuple[int, str, Callable[[str], Any] | None]] = []
    while True:
        start = reader.line_num + 1
        cells = _next_row(reader)
        if cells is None:
            if columns is None:
                yield Problem(1, (), EMPTY, "fatal")
            elif not rows:
                yield Problem(header_line, (), "no rows below the header", "fatal")
            return
        if isinstance(cells, Problem):
            yield cells
            return
        trimmed = list(map(str.strip, cells))
        if not any(trimmed):
            continue  # blank line, or a row of empty cells
        if columns is None:
            columns, problems = _plan_columns(cells, start, ctx)
            header_line = start
            yield from problems
            if any(p.kind == "fatal" for p in problems):
                return
            special = [(i, c, _CELLS.get(c)) for i, c in enumerate(columns) if c in _SPECIAL]
            continue
        rows += 1
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
        other = encoding_problem(fh.peek(4)[:4])
        if other is not None:
            yield Problem(1, (), other, "fatal")
            return
        rows = 0
        for number, raw in enumerate(fh, 1):
            try:
                line = _decode(raw, number)
            except UnicodeDecodeError as exc:
                yield Problem(number, (), f"not valid UTF-8 (byte {exc.start + 1} of the line)")
                continue
            if not line.strip():
                continue
            rows += 1
            try:
                value = parse_json(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield Problem(number, (), f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            except JsonValueError as exc:
                yield Problem(number, exc.loc, exc.reason)
                continue
            if not isinstance(value, dict):
                yield Problem(number, (), "expected a JSON object")
                continue
            yield Row(number, value)
        if not rows:
            yield Problem(1, (), EMPTY, "fatal")
