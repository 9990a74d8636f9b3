"""Reading a whole manifest: `scan` validates and counts, `iter_items` streams the items, and
`ManifestCheck` does both in one pass (what planning a run uses).

All read the file the same way, one row at a time (a CSV of a million rows is never held in
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
from batch.manifest.items import EditItem, SeenKeys, build_item
from batch.manifest.localfiles import LOCAL_PREFIX, ImageLimits, LocalFiles
from batch.manifest.pricing import Estimate, output_basis, size_pixels
from batch.manifest.readers import Defaults, Event, ReadContext, Row, read_csv, read_jsonl
from batch.manifest.yaml_reader import read_yaml
from batch.schema import DEFAULT_ENDPOINT

PathLike = str | os.PathLike[str]
_LOCAL_OR_INLINE = ("data:", LOCAL_PREFIX)
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
    inline_images: int = 0  # data: URIs
    local_images: int = 0  # references to local files (``local:sha256:…``)
    local_files: int = 0  # distinct local files
    duplicates: int = 0
    invalid_rows: int = 0
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    omitted_errors: int = 0
    omitted_warnings: int = 0
    # For cost: sizes taken from local or inline inputs too (`batch.manifest.pricing.Estimate`).
    estimate: Estimate = field(default_factory=Estimate)

    def describe(self) -> str:
        """One line for people, e.g. ``m.csv: 3 items, 4 input images → 6 output images, 3.1 MP
        (+1 item at input size), 1 duplicate skipped``."""
        text = (
            f"{display_path(self.path)}: {_n(self.items, 'item')}, "
            f"{_n(self.images, 'input image')}"
            + (f" ({_n(self.local_files, 'local file')})" if self.local_files else "")
            + f" → {_n(self.output_images, 'output image')}, {self.output_megapixels:.1f} MP"
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


def _check_job_defaults(
    defaults: Mapping[str, Any] | None, base_dir: Path, files: LocalFiles
) -> dict[str, Any]:
    values, problems = check_fields(defaults or {}, base_dir, files)
    if problems:
        raise ManifestError([f"defaults: {format_loc(loc)}: {why}" for loc, why in problems])
    return values


@dataclass(frozen=True, slots=True)
class _Duplicate:
    warning: Problem


_Outcome = EditItem | Problem | list[Problem] | _Duplicate


def _events(
    path: Path, name: str, endpoint: str, defaults: Mapping[str, Any] | None, files: LocalFiles
) -> Iterator[_Outcome]:
    """In file order: valid items, duplicates, problems, and an invalid row's problems (a list)."""
    base_dir = path.resolve().parent
    base = _check_job_defaults(defaults, base_dir, files)
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
        for event in reader(path, ReadContext(base_dir, base, files)):
            if isinstance(event, Row):  # the common case, inline: this runs once per row
                line = event.line
                built = build_item(
                    event.data,
                    defaults=base,
                    endpoint=endpoint,
                    base_dir=base_dir,
                    source=f"{name}:{line}",
                    files=files,
                )
                if isinstance(built, list):
                    yield [Problem(line, loc, why) for loc, why in built]
                elif (first := seen.add(built.key, built.request_hash, line)) is None:
                    yield built
                else:
                    yield _duplicate(built, line, first, name)
            elif isinstance(event, Defaults):
                base = {**base, **event.values}
            else:
                yield event
    except OSError as exc:
        yield Problem(None, (), f"cannot read ({exc.strerror})", "fatal")


def _duplicate(item: EditItem, line: int, first: tuple[bool, int], name: str) -> _Outcome:
    """A row whose key came before: the same request (skipped), or an error."""
    same, first_line = first
    if same:
        why = f"duplicate of {name}:{first_line} (skipped)"
        return _Duplicate(Problem(line, (), why, "warning"))
    why = f"duplicate id {item.key!r} (first at {name}:{first_line}) with a different request"
    return [Problem(line, ("id",), why)]


@dataclass
class _Tally:
    items: int = 0
    images: int = 0
    output_images: int = 0
    pixels: int = 0
    unknown_size: int = 0
    inline_images: int = 0
    local_images: int = 0
    duplicates: int = 0
    invalid_rows: int = 0
    errors: Messages = field(default_factory=Messages)
    warnings: Messages = field(default_factory=Messages)
    files: LocalFiles | None = None
    estimate: Estimate = field(default_factory=Estimate)

    def _local_size(self, sha256: str) -> tuple[int, int] | None:
        try:
            found = self.files.lookup(sha256) if self.files is not None else None
        except ValueError:
            return None
        return None if found is None else (found.width, found.height)

    def count(self, payload: Mapping[str, Any]) -> None:
        """Count a valid item by its payload (`EditInput` validated and dumped)."""
        urls: list[str] = payload["image_urls"]
        images: int = payload.get("num_images", 1)
        self.items += 1
        self.images += len(urls)
        for url in urls:
            if url.startswith(_LOCAL_OR_INLINE):
                if url.startswith("data:"):
                    self.inline_images += 1
                else:
                    self.local_images += 1
        self.output_images += images
        setting = payload.get("image_size")
        size = None if setting is None else size_pixels(setting)
        if size is not None:
            pixels = images * size[0] * size[1]
            self.pixels += pixels
            self.estimate.add(images, pixels)  # what output_basis gives for a set image_size
            return
        self.unknown_size += 1
        if urls[0].startswith(_LOCAL_OR_INLINE):  # the output takes this input's size
            self.estimate.add(*output_basis(payload, self._local_size))
        else:  # a remote input: its size is unknown until it is fetched
            self.estimate.add(images, None)


class ManifestCheck:
    """One pass over a manifest that checks every row and streams the valid items as it goes.

        check = ManifestCheck("m.csv")
        for item in check.items():   # the valid items, in file order
            ...
        check.summary                # the counts, once items() has run to its end

    When the file has been read, `items` raises `ManifestError` listing every error (see
    `scan`); ``summary`` is set only if it does not. Unless ``skip_invalid``, the items stop at
    the first error — they could not be used — but the reading goes on, to report every error.
    So a consumer that writes the items somewhere in one transaction (`Ledger.plan`) undoes it
    when the error comes, and a valid manifest is read once, not once to check and once to use.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        defaults: Mapping[str, Any] | None = None,
        skip_invalid: bool = False,
        files: LocalFiles | None = None,
    ) -> None:
        self.path = Path(path)
        self.endpoint = endpoint
        self.defaults = defaults
        self.skip_invalid = skip_invalid
        self.files = files if files is not None else LocalFiles(ImageLimits())
        self._summary: ManifestScan | None = None

    @property
    def summary(self) -> ManifestScan:
        if self._summary is None:
            raise RuntimeError("the manifest has not been read to its end")
        return self._summary

    def items(self) -> Iterator[EditItem]:
        """The valid items, duplicates dropped; then `ManifestError` if the manifest is invalid."""
        name = display_path(self.path)
        tally = _Tally(files=self.files)
        fatal = failed = False
        events = _events(self.path, name, self.endpoint, self.defaults, self.files)
        for event in events:
            if isinstance(event, EditItem):
                tally.count(event.payload)
                if not failed or self.skip_invalid:
                    yield event
            elif isinstance(event, list):
                tally.invalid_rows += 1
                failed = True
                for problem in event:
                    tally.errors.add(problem.format(name))
            elif isinstance(event, _Duplicate):
                tally.duplicates += 1
                tally.warnings.add(event.warning.format(name))
            elif event.kind == "warning":
                tally.warnings.add(event.format(name))
            else:
                fatal = fatal or event.kind == "fatal"
                failed = True
                tally.errors.add(event.format(name))
        self._summary = _summary(self.path, name, tally, fatal, self.skip_invalid)


def _summary(path: Path, name: str, tally: _Tally, fatal: bool, skip_invalid: bool) -> ManifestScan:
    """The counts of a read manifest; `ManifestError` if it is invalid (see `scan`)."""
    if not tally.items and not tally.errors.kept:
        tally.warnings.add(f"{name}: no items")
    errors, warnings = tally.errors, tally.warnings
    if errors.kept and (fatal or not skip_invalid):
        raise ManifestError(errors.kept, warnings.kept, omitted=errors.omitted)
    return ManifestScan(
        path=path,
        items=tally.items,
        images=tally.images,
        output_images=tally.output_images,
        output_megapixels=tally.pixels / 1_000_000,
        unknown_size_items=tally.unknown_size,
        inline_images=tally.inline_images,
        local_images=tally.local_images,
        local_files=len(tally.files) if tally.files is not None else 0,
        duplicates=tally.duplicates,
        invalid_rows=tally.invalid_rows,
        errors=tuple(errors.kept),
        warnings=tuple(warnings.kept),
        omitted_errors=errors.omitted,
        omitted_warnings=warnings.omitted,
        estimate=tally.estimate,
    )


def scan(
    path: PathLike,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    defaults: Mapping[str, Any] | None = None,
    skip_invalid: bool = False,
    files: LocalFiles | None = None,
) -> ManifestScan:
    """Read the whole manifest once, without network: every error, every warning, the counts.

    Raises `ManifestError` listing all errors (``file:line: field: reason``), unless
    ``skip_invalid``: then the errors are returned in the scan and only the valid items are
    counted. Errors about the file itself (missing, bad syntax, unknown format) always raise.
    Local images are read and checked into ``files`` (default: a new `LocalFiles` with the
    default `ImageLimits`); pass the same registry to `iter_items` to read each file once.
    """
    check = ManifestCheck(
        path, endpoint=endpoint, defaults=defaults, skip_invalid=skip_invalid, files=files
    )
    for _ in check.items():
        pass
    return check.summary


def iter_items(
    path: PathLike,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    defaults: Mapping[str, Any] | None = None,
    files: LocalFiles | None = None,
) -> Iterator[EditItem]:
    """Stream the valid items, duplicates dropped, in file order (lazily: a generator).

    Invalid rows are skipped silently: `scan` first (or use `load`) to refuse them. A problem
    with the file itself raises `ManifestError`. ``files`` as for `scan`.
    """
    manifest = Path(path)
    name = display_path(manifest)
    files = files if files is not None else LocalFiles(ImageLimits())
    for event in _events(manifest, name, endpoint, defaults, files):
        if isinstance(event, EditItem):
            yield event
        elif isinstance(event, Problem) and event.kind == "fatal":
            raise ManifestError([event.format(name)])


@dataclass(frozen=True)
class Manifest:
    """A scanned manifest: its summary, and its items (iterating reads the file again)."""

    path: Path
    endpoint: str
    defaults: Mapping[str, Any]
    summary: ManifestScan
    files: LocalFiles | None = None

    def __iter__(self) -> Iterator[EditItem]:
        return iter_items(
            self.path, endpoint=self.endpoint, defaults=self.defaults, files=self.files
        )


def load(
    path: PathLike,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    defaults: Mapping[str, Any] | None = None,
    skip_invalid: bool = False,
    files: LocalFiles | None = None,
) -> Manifest:
    """`scan` (raising `ManifestError` unless ``skip_invalid``), then items on iteration; the
    two share one `LocalFiles`, so each local image is read once."""
    files = files if files is not None else LocalFiles(ImageLimits())
    summary = scan(
        path, endpoint=endpoint, defaults=defaults, skip_invalid=skip_invalid, files=files
    )
    return Manifest(Path(path), endpoint, dict(defaults or {}), summary, files)
