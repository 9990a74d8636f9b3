"""What a dataset is made of: records, where their inputs' bytes are, and one sample each.

`DatasetRecord` is one output image with what made it; `resolve_input` finds an input's bytes
(a local file, a ``data:`` URI; a URL is kept, never fetched); `Sample` is a record ready for
a writer (its file-name stem, image extensions, inputs resolved and counted in the summary).
The errors and the `ExportSummary` live here too: every writer uses them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from batch.errors import BatchError, ExitCode
from batch.outputs.downloads import DownloadError, decode_data_uri
from batch.outputs.naming import sha256_file

MAX_INLINE_BYTES = 64 * 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"))
_IMAGE_EXTS = frozenset({"png", "jpg", "jpeg", "webp", "gif", "avif"})


class DatasetError(BatchError):
    """The dataset cannot be written as asked; the message says why and what to do."""

    exit_code = ExitCode.INVALID


class EmptyDatasetError(DatasetError):
    """No records: nothing accepted, or nothing completed. Nothing was written."""


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    """One output image (a record per output) with what made it: the inputs as the request
    named them (URLs, ``data:`` URIs, ``local:sha256:<hex>``, paths), the instruction (the
    prompt), seed and endpoint; a reviewer's note and name; other fields in `metadata`."""

    key: str
    instruction: str
    inputs: tuple[str, ...]
    output: Path  # the output image file
    output_index: int = 0
    seed: int | None = None
    endpoint: str = ""
    output_sha256: str | None = None
    output_bytes: int | None = None  # checked against the file when given
    note: str | None = None
    reviewer: str | None = None
    metadata: Mapping[str, Any] | None = None  # e.g. the request's other fields


@dataclass(frozen=True, slots=True)
class InputSource:
    """Where an input's bytes are: a local file, the bytes themselves, or only a URL (kept in
    the metadata, never fetched). All None: not available."""

    path: Path | None = None
    data: bytes | None = None
    url: str | None = None
    sha256: str | None = None  # of the content, when known

    @property
    def embeddable(self) -> bool:
        return self.path is not None or self.data is not None


Resolver = Callable[[str], InputSource]


def resolve_input(ref: str) -> InputSource:
    """The default resolver: a ``data:`` URI's bytes, an ``http(s)`` URL kept as a URL, an
    absolute path (or ``file:`` URL) of an existing file; anything else is not available."""
    if ref.startswith("data:"):
        try:
            return InputSource(data=decode_data_uri(ref, MAX_INLINE_BYTES)[0])
        except DownloadError:
            return InputSource()
    if ref.startswith(("http://", "https://")):
        return InputSource(url=ref)
    path = Path(ref.removeprefix("file://"))
    return InputSource(path=path) if path.is_absolute() and path.is_file() else InputSource()


@dataclass
class ExportSummary:
    """What `export_dataset` wrote."""

    dest: Path
    format: str
    records: int = 0
    files: int = 0  # metadata.jsonl / train.jsonl / parquet files / tar shards
    bytes: int = 0  # of images written or embedded
    inputs_embedded: int = 0
    inputs_as_url: int = 0
    inputs_missing: int = 0

    def text(self) -> str:
        return (
            f"{self.records} records → {self.dest} ({self.format}, {self.files} files,"
            f" {self.bytes / 1e6:.1f} MB of images); inputs: {self.inputs_embedded} embedded,"
            f" {self.inputs_as_url} as URLs, {self.inputs_missing} not available"
        )


def sample_name(key: str, index: int) -> str:
    """A file-name stem unique per (key, output index), with no dots (WebDataset's grouping)."""
    safe = _UNSAFE.sub("_", key)[:100]
    if safe != key:
        safe += "-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{safe}_{index}"


# --- one sample ----------------------------------------------------------------------------


@dataclass
class SampleInput:
    """An input of a sample: where its bytes are, and its file extension."""

    source: InputSource
    ext: str = "bin"

    @property
    def path(self) -> Path:
        assert self.source.path is not None
        return self.source.path

    def read(self) -> bytes:
        return self.source.data if self.source.data is not None else self.path.read_bytes()

    def size(self) -> int:
        return len(self.source.data) if self.source.data is not None else self.path.stat().st_size

    def sha256(self) -> str:
        digest = self.source.sha256
        if digest is None:
            data = self.source.data
            digest = (
                hashlib.sha256(data).hexdigest() if data is not None else sha256_file(self.path)[0]
            )
            self.source = replace(self.source, sha256=digest)
        return digest


@dataclass
class Sample:
    record: DatasetRecord
    name: str
    output_ext: str
    inputs: list[SampleInput] = field(default_factory=list)

    @classmethod
    def of(cls, record: DatasetRecord, resolve: Resolver, summary: ExportSummary) -> Sample:
        out = record.output
        try:
            size = out.stat().st_size
        except FileNotFoundError:
            raise DatasetError(
                f"{out}: output image of {record.key!r} is missing (`firered-batch doctor` checks"
                " the outputs against the ledger)"
            ) from None
        if record.output_bytes is not None and size != record.output_bytes:
            raise DatasetError(
                f"{out}: {size} bytes on disk, {record.output_bytes} in the ledger"
                " (`firered-batch doctor` checks the outputs against the ledger)"
            )
        sample = cls(record, sample_name(record.key, record.output_index), image_ext(out))
        for ref in record.inputs:
            source = resolve(ref)
            item = SampleInput(source)
            if source.embeddable:
                item.ext = image_ext(source.path) if source.path else _sniff(source.data or b"")
                summary.inputs_embedded += 1
            elif source.url:
                summary.inputs_as_url += 1
            else:
                summary.inputs_missing += 1
            sample.inputs.append(item)
        return sample

    def fields(self) -> dict[str, Any]:
        """The record's fields shared by every format (images aside)."""
        r = self.record
        return {
            "key": r.key,
            "output_index": r.output_index,
            "instruction": r.instruction,
            "seed": r.seed,
            "endpoint": r.endpoint,
            "input_urls": [i.source.url for i in self.inputs],
            "output_sha256": r.output_sha256,
            "note": r.note,
            "reviewer": r.reviewer,
        }


def image_ext(path: Path) -> str:
    """An image file's extension: from its name when it is an image's, else from its bytes."""
    ext = path.suffix.lower().lstrip(".")
    if ext in _IMAGE_EXTS:
        return "jpg" if ext == "jpeg" else ext
    with open(path, "rb") as fh:
        return _sniff(fh.read(32))


def _sniff(head: bytes) -> str:
    for magic, ext in _MAGIC:
        if head.startswith(magic):
            return ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "avif" if head[4:12] in (b"ftypavif", b"ftypavis") else "bin"


def json_text(value: Mapping[str, Any] | None) -> str | None:
    """`metadata` as one JSON text (its keys vary from item to item), or None."""
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
