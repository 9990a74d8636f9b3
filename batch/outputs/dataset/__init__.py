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

    records.py     DatasetRecord, resolve_input, one Sample per record, the errors, the summary
    writer.py      the folder that appears whole; the writers' base
    folder.py      the imagefolder writer
    tables.py      the jsonl and parquet writers (and the parquet features)
    webdataset.py  the tar-shard writer
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from batch.outputs.dataset.folder import FolderWriter
from batch.outputs.dataset.records import (
    MAX_INLINE_BYTES,
    DatasetError,
    DatasetRecord,
    EmptyDatasetError,
    ExportSummary,
    InputSource,
    Resolver,
    Sample,
    resolve_input,
    sample_name,
)
from batch.outputs.dataset.tables import (
    FEATURES,
    ROW_GROUP_BYTES,
    ROW_GROUP_ROWS,
    JsonlWriter,
    ParquetWriter,
)
from batch.outputs.dataset.webdataset import TarWriter
from batch.outputs.dataset.writer import Target, Writer, staged
from batch.outputs.faults import host_faults

__all__ = [
    "EXTRA_HINT",
    "FEATURES",
    "FORMATS",
    "MAX_INLINE_BYTES",
    "ROW_GROUP_BYTES",
    "ROW_GROUP_ROWS",
    "SHARD_BYTES",
    "SHARD_SIZE",
    "DatasetError",
    "DatasetRecord",
    "EmptyDatasetError",
    "ExportSummary",
    "InputSource",
    "Resolver",
    "export_dataset",
    "resolve_input",
    "sample_name",
]

FORMATS = ("folder", "jsonl", "parquet", "webdataset")
SHARD_SIZE = 1000  # samples (webdataset) or rows (parquet) per file at most
SHARD_BYTES = 512 * 1024 * 1024  # per file at most (parquet: about)
EXTRA_HINT = "pip install 'firered-batch[datasets]'"


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
    with host_faults(dest), staged(dest, overwrite) as tmp, ExitStack() as files:
        writer = _make_writer(fmt, Target(tmp, dest, summary, files), pa, shard_size, shard_bytes)
        for record in records:
            writer.add(Sample.of(record, resolve_input, summary))
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


def _make_writer(fmt: str, target: Target, pq: Any, shard_size: int, shard_bytes: int) -> Writer:
    if fmt == "folder":
        return FolderWriter(target)
    if fmt == "jsonl":
        return JsonlWriter(target)
    if fmt == "parquet":
        # Read here, when the export runs: this package's ROW_GROUP_* are the ones to set.
        return ParquetWriter(
            target,
            pq,
            shard_size,
            shard_bytes,
            row_group_rows=ROW_GROUP_ROWS,
            row_group_bytes=ROW_GROUP_BYTES,
        )
    return TarWriter(target, shard_size, shard_bytes)
