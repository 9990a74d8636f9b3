"""The table formats: ``jsonl`` (paths to the files) and ``parquet`` (the images embedded).

- ``jsonl``: ``dest/train.jsonl``, one line per record with absolute paths (``output_path``,
  ``input_paths``), ``output_file`` relative to ``dest``, every field; no image copied.
- ``parquet``: ``dest/train-NNNNN-of-NNNNN.parquet``, image columns as `datasets`' Image feature
  stores them (``struct<bytes: binary, path: string>``; ``input_images`` a list of them), the
  features in the schema's ``huggingface`` metadata, row groups of `ROW_GROUP_ROWS` rows (or
  `ROW_GROUP_BYTES`). pyarrow is passed in: the package imports it only for this format.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from batch.outputs.dataset.records import Sample, json_text
from batch.outputs.dataset.writer import Sharded, Target, Writer, open_text

ROW_GROUP_ROWS = 100  # as `datasets` writes image datasets
ROW_GROUP_BYTES = 128 * 1024 * 1024


class JsonlWriter(Writer):
    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.fh = open_text(self.files, self.tmp / "train.jsonl", "w")
        self.summary.files = 1

    def add(self, sample: Sample) -> None:
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


class ParquetWriter(Sharded):
    """Parquet files of row groups of `row_group_rows` rows (or `row_group_bytes`)."""

    def __init__(
        self,
        target: Target,
        pq: Any,
        shard_size: int,
        shard_bytes: int,
        *,
        row_group_rows: int = ROW_GROUP_ROWS,
        row_group_bytes: int = ROW_GROUP_BYTES,
    ) -> None:
        super().__init__(target, shard_size, shard_bytes)
        self.pq = pq
        self.pa = importlib.import_module("pyarrow")
        self.schema = _schema(self.pa)
        self.row_group_rows = row_group_rows
        self.row_group_bytes = row_group_bytes
        self.writer: Any = None
        self.rows: list[dict[str, Any]] = []
        self.buffered = 0
        self.paths: list[Path] = []

    def add(self, sample: Sample) -> None:
        out = sample.record.output
        image = {"bytes": out.read_bytes(), "path": f"{sample.name}.{sample.output_ext}"}
        inputs: list[dict[str, Any] | None] = [
            {"bytes": item.read(), "path": f"{sample.name}.input_{i}.{item.ext}"}
            if item.source.embeddable
            else None
            for i, item in enumerate(sample.inputs)
        ]
        row = {"image": image, "input_images": inputs} | sample.fields()
        row["metadata"] = json_text(sample.record.metadata)
        size = len(image["bytes"]) + sum(len(i["bytes"]) for i in inputs if i)
        if self.writer is None or not self.room(self.shard_used + size):
            self._next_file()
        self.rows.append(row)
        self.in_shard += 1
        self.shard_used += size
        self.buffered += size
        self.summary.bytes += size
        if len(self.rows) >= self.row_group_rows or self.buffered >= self.row_group_bytes:
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
