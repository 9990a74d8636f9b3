"""Reading a whole manifest: `scan` validates and counts, `iter_items` streams the items.

Both read the file the same way, one row at a time (a CSV of a million rows is never held in
memory): rows are merged with the defaults (job defaults < manifest defaults < row fields),
validated, keyed, and checked for duplicates. Only ``key → (request hash, line)`` is kept, in
a compact table (`SeenKeys`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch.manifest.errors import ManifestError, Messages, Problem, display_path, format_loc
from batch.manifest.fields import check_fields
from batch.manifest.items import Built, EditItem, SeenKeys, build_item
from batch.manifest.readers import Defaults, Event, ReadContext, Row, read_csv, read_jsonl
from batch.manifest.yaml_reader import read_yaml
from batch.schema import DEFAULT_ENDPOINT, image_size_pixels

PathLike = str | os.PathLike[str]
Reader = Callable[[Path, ReadContext], Iterator[Event]]

READERS: dict[str, Reader] = {
    ".yaml": read_yaml,
    ".yml": read_yaml,
    ".csv": read_csv,
    ".jsonl": read_jsonl,
}


@dataclass(frozen=True)
class ManifestScan:
    """What a manifest holds, counted over its valid, deduplicated items.

    ``output_megapixels`` sums ``num_images × width × height`` over the items whose output size
    is known (an ``image_size`` is set); ``unknown_size_items`` counts the others, whose output
    takes the size of an input image that has not been fetched. ``errors`` is empty unless the
    scan was asked to ``skip_invalid``; ``errors``/``warnings`` keep the first 1000 messages and
    ``omitted_errors``/``omitted_warnings`` count the rest.
    """

    path: Path
    items: int = 0
    images: int = 0
    output_images: int = 0
    output_megapixels: float = 0.0
    unknown_size_items: int = 0
    inline_images: int = 0  # data: URIs, local files sent inline among them
    duplicates: int = 0
    invalid_rows: int = 0
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    omitted_errors: int = 0
    omitted_warnings: int = 0

    def describe(self) -> str:
        """One line for people, e.g. ``m.csv: 3 items, 4 input images → 6 output images, 3.1 MP
        (+1 item at input size), 1 duplicate skipped``."""
        text = (
            f"{display_path(self.path)}: {_n(self.items, 'item')}, "
            f"{_n(self.images, 'input image')} → {_n(self.output_images, 'output image')}, "
            f"{self.output_megapixels:.1f} MP"
        )
        if self.unknown_size_items:
            text += f" (+{_n(self.unknown_size_items, 'item')} at input size)"
        if self.duplicates:
            text += f", {_n(self.duplicates, 'duplicate')} skipped"
        if self.invalid_rows:
            text += f", {_n(self.invalid_rows, 'invalid row')} skipped"
        return text


def _n(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _check_job_defaults(defaults: Mapping[str, Any] | None, base_dir: Path) -> dict[str, Any]:
    values, problems = check_fields(defaults or {}, base_dir)
    if problems:
        raise ManifestError([f"defaults: {format_loc(loc)}: {why}" for loc, why in problems])
    return values


@dataclass(frozen=True, slots=True)
class _Duplicate:
    warning: Problem


_Outcome = Built | Problem | list[Problem] | _Duplicate


def _events(
    path: Path, name: str, endpoint: str, defaults: Mapping[str, Any] | None
) -> Iterator[_Outcome]:
    """In file order: valid items, duplicates, problems, and an invalid row's problems (a list)."""
    base_dir = path.resolve().parent
    base = _check_job_defaults(defaults, base_dir)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        why = f"unknown manifest format '{path.suffix}' (expected .yaml, .yml, .csv or .jsonl)"
        yield Problem(None, (), why, "fatal")
        return
    if not path.is_file():
        yield Problem(None, (), "file not found" if not path.exists() else "not a file", "fatal")
        return
    seen = SeenKeys()
    try:
        for event in reader(path, ReadContext(base_dir, base)):
            if isinstance(event, Defaults):
                base = {**base, **event.values}
            elif isinstance(event, Row):
                yield _row(event, seen, name, endpoint, base, base_dir)
            else:
                yield event
    except OSError as exc:
        yield Problem(None, (), f"cannot read ({exc.strerror})", "fatal")


def _row(
    row: Row,
    seen: SeenKeys,
    name: str,
    endpoint: str,
    defaults: Mapping[str, Any],
    base_dir: Path,
) -> _Outcome:
    source = f"{name}:{row.line}"
    built = build_item(
        row.data, defaults=defaults, endpoint=endpoint, base_dir=base_dir, source=source
    )
    if isinstance(built, list):
        return [Problem(row.line, loc, why) for loc, why in built]
    first = seen.add(built.item.key, built.digest, row.line)
    if first is None:
        return built
    same, first_line = first
    if same:
        why = f"duplicate of {name}:{first_line} (skipped)"
        return _Duplicate(Problem(row.line, (), why, "warning"))
    why = f"duplicate id {built.item.key!r} (first at {name}:{first_line}) with a different request"
    return [Problem(row.line, ("id",), why)]


@dataclass
class _Tally:
    items: int = 0
    images: int = 0
    output_images: int = 0
    pixels: int = 0
    unknown_size: int = 0
    inline_images: int = 0
    duplicates: int = 0
    invalid_rows: int = 0
    errors: Messages = field(default_factory=Messages)
    warnings: Messages = field(default_factory=Messages)

    def count(self, built: Built) -> None:
        model = built.model
        self.items += 1
        self.images += len(model.image_urls)
        self.inline_images += sum(url.startswith("data:") for url in model.image_urls)
        self.output_images += model.num_images
        size = image_size_pixels(model.image_size)
        if size is None:
            self.unknown_size += 1
        else:
            self.pixels += model.num_images * size[0] * size[1]


def scan(
    path: PathLike,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    defaults: Mapping[str, Any] | None = None,
    skip_invalid: bool = False,
) -> ManifestScan:
    """Read the whole manifest once, without network: every error, every warning, the counts.

    Raises `ManifestError` listing all errors (``file:line: field: reason``), unless
    ``skip_invalid``: then the errors are returned in the scan and only the valid items are
    counted. Errors about the file itself (missing, bad syntax, unknown format) always raise.
    """
    manifest = Path(path)
    name = display_path(manifest)
    tally = _Tally()
    fatal = False
    for event in _events(manifest, name, endpoint, defaults):
        if isinstance(event, Built):
            tally.count(event)
        elif isinstance(event, list):
            tally.invalid_rows += 1
            for problem in event:
                tally.errors.add(problem.format(name))
        elif isinstance(event, _Duplicate):
            tally.duplicates += 1
            tally.warnings.add(event.warning.format(name))
        elif event.kind == "warning":
            tally.warnings.add(event.format(name))
        else:
            fatal = fatal or event.kind == "fatal"
            tally.errors.add(event.format(name))
    if not tally.items and not tally.errors.kept:
        tally.warnings.add(f"{name}: no items")
    errors, warnings = tally.errors, tally.warnings
    if errors.kept and (fatal or not skip_invalid):
        raise ManifestError(errors.kept, warnings.kept, omitted=errors.omitted)
    return ManifestScan(
        path=manifest,
        items=tally.items,
        images=tally.images,
        output_images=tally.output_images,
        output_megapixels=tally.pixels / 1_000_000,
        unknown_size_items=tally.unknown_size,
        inline_images=tally.inline_images,
        duplicates=tally.duplicates,
        invalid_rows=tally.invalid_rows,
        errors=tuple(errors.kept),
        warnings=tuple(warnings.kept),
        omitted_errors=errors.omitted,
        omitted_warnings=warnings.omitted,
    )


def iter_items(
    path: PathLike,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    defaults: Mapping[str, Any] | None = None,
) -> Iterator[EditItem]:
    """Stream the valid items, duplicates dropped, in file order (lazily: a generator).

    Invalid rows are skipped silently: `scan` first (or use `load`) to refuse them. A problem
    with the file itself raises `ManifestError`.
    """
    manifest = Path(path)
    name = display_path(manifest)
    for event in _events(manifest, name, endpoint, defaults):
        if isinstance(event, Built):
            yield event.item
        elif isinstance(event, Problem) and event.kind == "fatal":
            raise ManifestError([event.format(name)])


@dataclass(frozen=True)
class Manifest:
    """A scanned manifest: its summary, and its items (iterating reads the file again)."""

    path: Path
    endpoint: str
    defaults: Mapping[str, Any]
    summary: ManifestScan

    def __iter__(self) -> Iterator[EditItem]:
        return iter_items(self.path, endpoint=self.endpoint, defaults=self.defaults)


def load(
    path: PathLike,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    defaults: Mapping[str, Any] | None = None,
    skip_invalid: bool = False,
) -> Manifest:
    """`scan` (raising `ManifestError` unless ``skip_invalid``), then items on iteration."""
    summary = scan(path, endpoint=endpoint, defaults=defaults, skip_invalid=skip_invalid)
    return Manifest(Path(path), endpoint, dict(defaults or {}), summary)
