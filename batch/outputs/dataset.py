"""Training datasets of (input images, instruction, output image): what `export --accepted` writes.

`export_dataset(records, dest, fmt)` streams `DatasetRecord`s (one per output image) into a
folder `dest`, built under a temporary name beside it and renamed into place only when whole.
No more than one row group (parquet) or one sample is held in memory. Layouts:

- ``folder``: Hugging Face `datasets`' imagefolder, ``dest/train/metadata.jsonl`` with
  ``images/<sample>.<ext>`` (the output, key ``file_name``: column ``image``) and
  ``inputs/<sha256>.<ext>`` (each distinct input once, keys ``input_image_<i>_file_name``:
  columns ``input_image_<i>``). Files are hard links where the file system allows, else copies.
  Every row has every key (null where absent); the first rows are, for each key, the first row
  that has a value there (`datasets` infers a column's type from the file's first rows), then
  the rest in order. ``metadata`` is JSON text (its keys vary from item to item).
- ``jsonl``: ``dest/train.jsonl``, one line per record with absolute paths (``output_path``,
  ``input_paths``), ``output_file`` relative to ``dest``, every field; no image copied.
- ``parquet``: ``dest/train-NNNNN-of-NNNNN.parquet``, image columns as `datasets`' Image feature
  stores them (``struct<bytes: binary, path: string>``; ``input_images`` a list of them), the
  features in the schema's ``huggingface`` metadata, row groups of `ROW_GROUP_ROWS`. Needs
  pyarrow: ``pip install 'firered-batch[datasets]'``.
- ``webdataset``: ``dest/shard-NNNNNN.tar``, samples ``<sample>.input_<i>.<ext>``,
  ``<sample>.output.<ext>``, ``<sample>.json``; a shard holds at most `shard_size` samples and
  `shard_bytes` bytes (a sample larger than that alone).

``<sample>`` is the key (characters other than ``A-Za-z0-9_-`` replaced, then a hash of the key
appended) and ``_<output index>``: no dots, as WebDataset's grouping needs. An input reaches the
dataset as bytes when `resolve_input` finds them (a local file, a ``data:`` URI); an input known
only by its URL is never fetched (an export works offline and cannot fail on the network): its
image is null and ``input_urls[i]`` keeps the URL. No records is `EmptyDatasetError`, nothing
written (an imagefolder without rows does not load).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from batch.errors import BatchError, ExitCode
from batch.outputs.downloads import DownloadError, decode_data_uri
from batch.outputs.durable import fsync_dir, sync_files, temp_path
from batch.outputs.faults import host_faults
from batch.outputs.naming import sha256_file

FORMATS = ("folder", "jsonl", "parquet", "webdataset")
SHARD_SIZE = 1000  # samples (webdataset) or rows (parquet) per file at most
SHARD_BYTES = 512 * 1024 * 1024  # per file at most (parquet: about)
ROW_GROUP_ROWS = 100  # as `datasets` writes image datasets
ROW_GROUP_BYTES = 128 * 1024 * 1024
MAX_INLINE_BYTES = 64 * 1024 * 1024
EXTRA_HINT = "pip install 'firered-batch[datasets]'"
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


def export_dataset(
    records: Iterable[DatasetRecord],
    dest: Path,
    fmt: str,
    *,
    shard_size: int = SHARD_SIZE,
    shard_bytes: int = SHARD_BYTES,
    resolve_input: Resolver = resolve_input,
    overwrite: bool = False,
) -> ExportSummary:
    """Write `records` as a dataset folder `dest` in format `fmt` (see the module docstring).

    `dest` appears only whole; an existing non-empty `dest` is a `DatasetError` unless
    `overwrite`, when it is replaced. No records: `EmptyDatasetError`, nothing written."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r} (one of: {', '.join(FORMATS)})")
    if shard_size < 1 or shard_bytes < 64 * 1024:
        raise DatasetError("shard_size must be at least 1 and shard_bytes at least 64 KiB")
    pa = _pyarrow() if fmt == "parquet" else None
    summary = ExportSummary(dest, fmt)
    with host_faults(dest), _staged(dest, overwrite) as tmp, ExitStack() as files:
        writer = _make_writer(fmt, _Target(tmp, dest, summary, files), pa, shard_size, shard_bytes)
        for record in records:
            writer.add(_Sample.of(record, resolve_input, summary))
            summary.records += 1
        if not summary.records:
            raise EmptyDatasetError(f"no records to export to {dest}: nothing was accepted")
        writer.close()
    return summary


def _pyarrow() -> Any:
    try:
        return importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise DatasetError(f"the parquet format needs pyarrow: {EXTRA_HINT}") from None


# --- one sample ----------------------------------------------------------------------------


@dataclass
class _Input:
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
class _Sample:
    record: DatasetRecord
    name: str
    output_ext: str
    inputs: list[_Input] = field(default_factory=list)

    @classmethod
    def of(cls, record: DatasetRecord, resolve: Resolver, summary: ExportSummary) -> _Sample:
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
        sample = cls(record, sample_name(record.key, record.output_index), _ext(out))
        for ref in record.inputs:
            source = resolve(ref)
            item = _Input(source)
            if source.embeddable:
                item.ext = _ext(source.path) if source.path else _sniff(source.data or b"")
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


def _ext(path: Path) -> str:
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


def _has_value(value: Any) -> bool:
    if isinstance(value, list):
        return any(v is not None for v in value)
    return value is not None


def _json_text(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


# --- the folder that appears whole -----------------------------------------------------------


@contextmanager
def _staged(dest: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside `dest`, renamed to `dest` when the block ends well (any old
    `dest` set aside and removed after), removed when it does not."""
    if dest.exists() and not overwrite and not (dest.is_dir() and not any(dest.iterdir())):
        raise DatasetError(f"{dest} already exists: choose another destination, or overwrite it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    tmp.mkdir()
    try:
        yield tmp
        _sync_tree(tmp)
        old = temp_path(dest) if dest.exists() else None
        if old is not None:
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except OSError:
            if old is not None:
                os.replace(old, dest)
            raise
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink(missing_ok=True)


def _sync_tree(root: Path) -> None:
    """Make every file and folder under `root` durable (one `syncfs` per folder on Linux)."""
    walked = list(os.walk(root))
    failed = sync_files([Path(folder, name) for folder, _, names in walked for name in names])
    if failed:
        raise next(iter(failed.values()))
    for folder, _, _ in walked:
        fsync_dir(Path(folder))


def _open(files: ExitStack, path: Path, mode: str) -> IO[str]:
    """A text file kept open until `files` closes."""
    return files.enter_context(open(path, mode, encoding="utf-8", newline="\n"))


def _open_tar(files: ExitStack, path: Path) -> tarfile.TarFile:
    return files.enter_context(tarfile.open(path, "w", format=tarfile.PAX_FORMAT))


def _place(src: Path, dst: Path) -> None:
    """`dst` as a hard link to `src` (outputs are replaced by renames, never edited in place),
    or a copy where a link cannot be made (another file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# --- writers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    tmp: Path  # the folder being written, renamed to `dest` at the end
    dest: Path
    summary: ExportSummary
    files: ExitStack  # open files, closed when the export ends, however it ends


class _Writer:
    def __init__(self, target: _Target) -> None:
        self.tmp = target.tmp
        self.dest = target.dest
        self.summary = target.summary
        self.files = target.files

    def add(self, sample: _Sample) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the files, after the last sample."""


class _JsonlWriter(_Writer):
    def __init__(self, target: _Target) -> None:
        super().__init__(target)
        self.fh = _open(self.files, self.tmp / "train.jsonl", "w")
        self.summary.files = 1

    def add(self, sample: _Sample) -> None:
        out = sample.record.output.absolute()
        row = sample.fields()
        row["output_path"] = str(out)
        row["output_file"] = os.path.relpath(out, self.dest.absolute())
        row["input_refs"] = list(sample.record.inputs)
        row["input_paths"] = [str(i.source.path) if i.source.path else None for i in sample.inputs]
        row["metadata"] = sample.record.metadata
        self.fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.fh.close()


class _FolderWriter(_Writer):
    """imagefolder: rows spooled, then written with every key, type-giving rows first."""

    def __init__(self, target: _Target) -> None:
        super().__init__(target)
        self.root = self.tmp / "train"
        (self.root / "images").mkdir(parents=True)
        (self.root / "inputs").mkdir()
        spool = self.tmp / "metadata.spool"
        self.spool = _open(self.files, spool, "w+")
        self.files.callback(spool.unlink, missing_ok=True)
        self.columns: dict[str, bool] = {}  # every key seen: whether a row has a value there
        self.first: dict[int, dict[str, Any]] = {}  # line → row: the first value of a column
        self.lines = 0
        self.placed: set[str] = set()

    def add(self, sample: _Sample) -> None:
        name = f"images/{sample.name}.{sample.output_ext}"
        _place(sample.record.output, self.root / name)
        self.summary.bytes += sample.record.output.stat().st_size
        row: dict[str, Any] = {"file_name": name}
        for i, item in enumerate(sample.inputs):
            row[f"input_image_{i}_file_name"] = self._input(item)
        row |= sample.fields()
        row["metadata"] = _json_text(sample.record.metadata)
        for column, value in row.items():
            if not self.columns.setdefault(column, False) and _has_value(value):
                self.columns[column] = True
                self.first[self.lines] = row
        self.spool.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.lines += 1

    def _input(self, item: _Input) -> str | None:
        if not item.source.embeddable:
            return None
        name = f"inputs/{item.sha256()}.{item.ext}"
        if name not in self.placed:
            if item.source.path is not None:
                _place(item.source.path, self.root / name)
            else:
                (self.root / name).write_bytes(item.read())
            self.summary.bytes += item.size()
            self.placed.add(name)
        return name

    def close(self) -> None:
        seen = list(self.columns)

        def order(column: str) -> tuple[int, int]:
            if column.startswith("input_image_"):
                return 1, int(column.split("_")[2])
            return (0, 0) if column == "file_name" else (2, seen.index(column))

        columns = sorted(seen, key=order)
        self.spool.seek(0)
        with open(self.root / "metadata.jsonl", "w", encoding="utf-8", newline="\n") as fh:
            for row in self.first.values():
                fh.write(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n")
            for n, line in enumerate(self.spool):
                if n not in self.first:
                    row = json.loads(line)
                    fh.write(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False))
                    fh.write("\n")
        self.summary.files = 1


class _Sharded(_Writer):
    """Files of at most `shard_size` samples and about `shard_bytes` bytes each."""

    def __init__(self, target: _Target, shard_size: int, shard_bytes: int) -> None:
        super().__init__(target)
        self.shard_size = shard_size
        self.shard_bytes = shard_bytes
        self.in_shard = 0
        self.shard_used = 0

    def room(self, total: int) -> bool:
        """Whether one more sample fits in the current shard, which would then weigh `total`
        bytes (an empty shard takes any sample)."""
        if self.in_shard == 0:
            return True
        return self.in_shard < self.shard_size and total <= self.shard_bytes


_Member = tuple[tarfile.TarInfo, Callable[[], IO[bytes]]]


class _TarWriter(_Sharded):
    """WebDataset shards, their sizes counted exactly (headers, padding, end blocks)."""

    tar: tarfile.TarFile | None = None

    def add(self, sample: _Sample) -> None:
        mtime = int(sample.record.output.stat().st_mtime)
        meta = sample.fields() | {"metadata": sample.record.metadata}
        body = json.dumps(meta, ensure_ascii=False).encode()
        members: list[_Member] = []
        for i, item in enumerate(sample.inputs):
            if item.source.embeddable:
                members.append(self._member(f"{sample.name}.input_{i}.{item.ext}", item, mtime))
        out = _Input(InputSource(path=sample.record.output), sample.output_ext)
        members.append(self._member(f"{sample.name}.output.{sample.output_ext}", out, mtime))
        members.append((_info(f"{sample.name}.json", len(body), mtime), lambda: io.BytesIO(body)))
        size = sum(_tar_size(info) for info, _ in members)
        if self.tar is None or not self.room(_record_size(self.tar.offset + size)):
            self._next_shard()
        assert self.tar is not None
        for info, opener in members:
            with opener() as fh:
                self.tar.addfile(info, fh)
        self.in_shard += 1
        self.summary.bytes += sum(info.size for info, _ in members[:-1])

    def _member(self, name: str, item: _Input, mtime: int) -> _Member:
        source = item.source
        if source.data is not None:
            data = source.data
            return _info(name, len(data), mtime), lambda: io.BytesIO(data)
        assert source.path is not None
        path = source.path
        return _info(name, path.stat().st_size, mtime), lambda: open(path, "rb")

    def _next_shard(self) -> None:
        self.close()
        path = self.tmp / f"shard-{self.summary.files:06d}.tar"
        self.tar = _open_tar(self.files, path)
        self.summary.files += 1
        self.in_shard = self.shard_used = 0

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info


def _tar_size(info: tarfile.TarInfo) -> int:
    header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    return len(header) + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _record_size(offset: int) -> int:
    """The size of a tar file whose members end at `offset`."""
    end = offset + 2 * tarfile.BLOCKSIZE
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


# --- parquet ---------------------------------------------------------------------------------

_IMAGE = {"_type": "Image"}
_STRING = {"dtype": "string", "_type": "Value"}
_INT = {"dtype": "int64", "_type": "Value"}
# `datasets` reads a column's feature from here when its Arrow type is the feature's own.
FEATURES: dict[str, Any] = {
    "image": _IMAGE,
    "input_images": {"feature": _IMAGE, "length": -1, "_type": "Sequence"},
    "instruction": _STRING,
    "key": _STRING,
    "output_index": _INT,
    "seed": _INT,
    "endpoint": _STRING,
    "input_urls": {"feature": _STRING, "length": -1, "_type": "Sequence"},
    "output_sha256": _STRING,
    "note": _STRING,
    "reviewer": _STRING,
    "metadata": _STRING,
}


def _schema(pa: Any) -> Any:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    types = {"image": image, "input_images": pa.list_(image), "input_urls": pa.list_(pa.string())}
    types |= {"output_index": pa.int64(), "seed": pa.int64()}
    fields = [(name, types.get(name, pa.string())) for name in FEATURES]
    meta = json.dumps({"info": {"features": FEATURES}})
    return pa.schema(fields, metadata={"huggingface": meta})


class _ParquetWriter(_Sharded):
    """Parquet files of row groups of `ROW_GROUP_ROWS` rows (or `ROW_GROUP_BYTES`)."""

    def __init__(self, target: _Target, pq: Any, shard_size: int, shard_bytes: int) -> None:
        super().__init__(target, shard_size, shard_bytes)
        self.pq = pq
        self.pa = importlib.import_module("pyarrow")
        self.schema = _schema(self.pa)
        self.writer: Any = None
        self.rows: list[dict[str, Any]] = []
        self.buffered = 0
        self.paths: list[Path] = []

    def add(self, sample: _Sample) -> None:
        out = sample.record.output
        image = {"bytes": out.read_bytes(), "path": f"{sample.name}.{sample.output_ext}"}
        inputs: list[dict[str, Any] | None] = [
            {"bytes": item.read(), "path": f"{sample.name}.input_{i}.{item.ext}"}
            if item.source.embeddable
            else None
            for i, item in enumerate(sample.inputs)
        ]
        row = {"image": image, "input_images": inputs} | sample.fields()
        row["metadata"] = _json_text(sample.record.metadata)
        size = len(image["bytes"]) + sum(len(i["bytes"]) for i in inputs if i)
        if self.writer is None or not self.room(self.shard_used + size):
            self._next_file()
        self.rows.append(row)
        self.in_shard += 1
        self.shard_used += size
        self.buffered += size
        self.summary.bytes += size
        if len(self.rows) >= ROW_GROUP_ROWS or self.buffered >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            table = self.pa.Table.from_pylist(self.rows, schema=self.schema)
            self.writer.write_table(table, row_group_size=len(self.rows))
            self.rows, self.buffered = [], 0

    def _next_file(self) -> None:
        self._end_file()
        self.paths.append(self.tmp / f"train-{len(self.paths):05d}.parquet")
        self.writer = self.files.enter_context(self.pq.ParquetWriter(self.paths[-1], self.schema))
        self.in_shard = self.shard_used = 0

    def _end_file(self) -> None:
        if self.writer is not None:
            self._flush()
            self.writer.close()
            self.writer = None

    def close(self) -> None:
        self._end_file()
        n = len(self.paths)
        for i, path in enumerate(self.paths):
            path.rename(self.tmp / f"train-{i:05d}-of-{n:05d}.parquet")
        self.summary.files = n


def _make_writer(fmt: str, target: _Target, pq: Any, shard_size: int, shard_bytes: int) -> _Writer:
    if fmt == "folder":
        return _FolderWriter(target)
    if fmt == "jsonl":
        return _JsonlWriter(target)
    if fmt == "parquet":
        return _ParquetWriter(target, pq, shard_size, shard_bytes)
    return _TarWriter(target, shard_size, shard_bytes)
