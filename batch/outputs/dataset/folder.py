"""The ``folder`` format: Hugging Face `datasets`' imagefolder.

``dest/train/metadata.jsonl`` with ``images/<sample>.<ext>`` (the output, key ``file_name``)
and ``inputs/<sha256>.<ext>`` (each distinct input once, keys ``input_image_<i>_file_name``),
hard links where the file system allows, else copies. Rows are spooled to a file, then written
with every key (null where absent), the rows that first give each key a value first.
"""

from __future__ import annotations

import json
from typing import Any

from batch.outputs.dataset.records import Sample, SampleInput, json_text
from batch.outputs.dataset.writer import Target, Writer, open_text, place


class FolderWriter(Writer):
    """imagefolder: rows spooled, then written with every key, type-giving rows first."""

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.root = self.tmp / "train"
        (self.root / "images").mkdir(parents=True)
        (self.root / "inputs").mkdir()
        spool = self.tmp / "metadata.spool"
        self.spool = open_text(self.files, spool, "w+")
        self.files.callback(spool.unlink, missing_ok=True)
        self.columns: dict[str, bool] = {}  # every key seen: whether a row has a value there
        self.first: dict[int, dict[str, Any]] = {}  # line → row: the first value of a column
        self.lines = 0
        self.placed: set[str] = set()

    def add(self, sample: Sample) -> None:
        name = f"images/{sample.name}.{sample.output_ext}"
        place(sample.record.output, self.root / name)
        self.summary.bytes += sample.record.output.stat().st_size
        row: dict[str, Any] = {"file_name": name}
        for i, item in enumerate(sample.inputs):
            row[f"input_image_{i}_file_name"] = self._input(item)
        row |= sample.fields()
        row["metadata"] = json_text(sample.record.metadata)
        for column, value in row.items():
            if not self.columns.setdefault(column, False) and _has_value(value):
                self.columns[column] = True
                self.first[self.lines] = row
        self.spool.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.lines += 1

    def _input(self, item: SampleInput) -> str | None:
        if not item.source.embeddable:
            return None
        name = f"inputs/{item.sha256()}.{item.ext}"
        if name not in self.placed:
            if item.source.path is not None:
                place(item.source.path, self.root / name)
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


def _has_value(value: Any) -> bool:
    if isinstance(value, list):
        return any(v is not None for v in value)
    return value is not None
