"""How manifest and job-file problems are spelled, and the error that carries them.

Every problem is one line, ``file:line: field: reason``:

- ``file`` is the path as shown to the user (see `display_path`);
- ``line`` is the 1-based line where the row or item starts; a problem with the file as a whole
  and no line (a missing file) is ``file: reason``;
- ``field`` is the input field path, pydantic's ``loc`` spelled ``image_urls[1]`` or
  ``image_size.width``; it is left out when the problem is not about one field
  (``file:12: invalid JSON: …``);
- ``reason`` is pydantic's message (``Field required``, ``Input should be 'jpeg' or 'png'``) or
  one of ours (``unknown field``, ``not a valid URL or file path``, …).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from batch.errors import InvalidInputError

Loc = tuple[str | int, ...]
FieldProblem = tuple[Loc, str]  # (field path, reason): a problem not yet placed in a file

# How deep a row's values may nest (JSON arrays and objects, YAML collections; a YAML file's own
# root mapping and lists count too). A valid row needs 3 (a YAML manifest's matrix image set 5):
# deeper input is refused before it is parsed further, instead of recursing without end.
MAX_DEPTH = 10
MAX_MESSAGE_CHARS = 1000  # a message line longer than this is cut (a huge key or path in it)


def printable(text: str) -> str:
    """A message as it can be shown on any terminal: control characters, lone surrogates and
    other characters that are not printable escaped (``\\x1b``, ``\\ud800``), cut to
    `MAX_MESSAGE_CHARS`. User input (a key, a path) goes into messages as it is written."""
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "…"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# A custom pydantic error of this type carries a list of FieldProblem in ctx["problems"]; it is
# expanded into one problem per entry, below the error's own loc (job `defaults:` uses it).
NESTED_ERROR = "nested_fields"


def format_loc(loc: Loc) -> str:
    """Spell a loc: ``("image_urls", 1)`` → ``image_urls[1]``, ``("a", "b")`` → ``a.b``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def display_path(path: str | os.PathLike[str]) -> str:
    """The path as messages show it: relative to the current directory when below it."""
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return str(p)
    return str(p)


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in a file. ``fatal`` ones end the reading of the file."""

    line: int | None
    loc: Loc
    reason: str
    kind: Literal["error", "fatal", "warning"] = "error"

    def format(self, name: str) -> str:
        where = name if self.line is None else f"{name}:{self.line}"
        field = format_loc(self.loc)
        return printable(f"{where}: {field}: {self.reason}" if field else f"{where}: {self.reason}")


def _is_union_tag(part: str | int) -> bool:
    # pydantic puts the union member in the loc ("str-enum[ImageSizePreset]", "ImageSize");
    # field names are snake_case identifiers.
    return isinstance(part, str) and not (part.isidentifier() and part[:1].islower())


def _reason(err: Any) -> str:
    kind = err["type"]
    if kind in ("extra_forbidden", "no_such_attribute"):
        return "unknown field"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    return str(err["msg"])


def validation_problems(exc: ValidationError) -> list[FieldProblem]:
    """A pydantic error as (field path, reason) pairs, union tags dropped, duplicates merged."""
    out: list[FieldProblem] = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
        if err["type"] == "extra_forbidden" and err["loc"] and loc[-1:] != err["loc"][-1:]:
            loc += (err["loc"][-1],)  # an unknown key is never a union tag (`my field`)
        if err["type"] == NESTED_ERROR:
            pairs: Iterable[FieldProblem] = [
                (loc + sub, why) for sub, why in err["ctx"]["problems"]
            ]
        else:
            pairs = [(loc, _reason(err))]
        out.extend(p for p in pairs if p not in out)
    return out


class ManifestError(InvalidInputError):
    """A manifest that cannot be run as it is. ``str()`` lists the errors one per line.

    ``errors`` holds at most `MAX_MESSAGES` lines; ``omitted`` counts the rest.
    """

    def __init__(
        self, errors: Sequence[str], warnings: Sequence[str] = (), *, omitted: int = 0
    ) -> None:
        self.errors = [printable(e) for e in errors]
        self.warnings = [printable(w) for w in warnings]
        self.omitted = omitted
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = list(self.errors)
        if self.omitted:
            lines.append(f"… and {self.omitted} more errors")
        return "\n".join(lines)


MAX_MESSAGES = 1000  # errors (and warnings) kept for display; the rest are only counted


class Messages:
    """An append-only list of messages that keeps the first `MAX_MESSAGES` and counts the rest."""

    def __init__(self, limit: int = MAX_MESSAGES) -> None:
        self.kept: list[str] = []
        self.omitted = 0
        self._limit = limit

    def add(self, message: str) -> None:
        if len(self.kept) < self._limit:
            self.kept.append(message)
        else:
            self.omitted += 1

    def __len__(self) -> int:
        return len(self.kept) + self.omitted


class InvalidValue:
    """A value the file holds but Python cannot (a 5,000-digit integer, ``NaN``), kept in its
    place so that the problem is reported at its field: ``reason`` is the message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"InvalidValue({self.reason!r})"


NOT_FINITE = "Input should be a finite number"


def too_many_digits(digits: int) -> InvalidValue:
    return InvalidValue(f"number too large ({digits} digits)")


def invalid_values(value: Any, loc: Loc = ()) -> list[FieldProblem]:
    """Every `InvalidValue` in a parsed value (dicts and lists, walked without recursion, each
    shared object once), as (field path, reason)."""
    problems: list[FieldProblem] = []
    seen: set[int] = set()
    stack: list[tuple[Loc, Any]] = [(loc, value)]
    while stack:
        where, current = stack.pop()
        if isinstance(current, InvalidValue):
            problems.append((where, current.reason))
        elif isinstance(current, dict | list) and id(current) not in seen:
            seen.add(id(current))
            pairs = current.items() if isinstance(current, dict) else enumerate(current)
            stack.extend(((*where, k if isinstance(k, int) else str(k)), v) for k, v in pairs)
    problems.sort(key=lambda p: [str(part) for part in p[0]])
    return problems
