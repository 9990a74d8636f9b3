"""The ``webdataset`` format: tar shards of samples grouped by basename.

``dest/shard-NNNNNN.tar``, samples ``<sample>.input_<i>.<ext>``, ``<sample>.output.<ext>``,
``<sample>.json``; a shard holds at most `shard_size` samples and `shard_bytes` bytes (a sample
larger than that alone), its size counted exactly before a sample is added.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from batch.outputs.dataset.records import InputSource, Sample, SampleInput
from batch.outputs.dataset.writer import Sharded

_Member = tuple[tarfile.TarInfo, Callable[[], IO[bytes]]]


class TarWriter(Sharded):
    """WebDataset shards, their sizes counted exactly (headers, padding, end blocks)."""

    tar: tarfile.TarFile | None = None

    def add(self, sample: Sample) -> None:
        mtime = int(sample.record.output.stat().st_mtime)
        meta = sample.fields() | {"metadata": sample.record.metadata}
        body = json.dumps(meta, ensure_ascii=False).encode()
        members: list[_Member] = []
        for i, item in enumerate(sample.inputs):
            if item.source.embeddable:
                members.append(self._member(f"{sample.name}.input_{i}.{item.ext}", item, mtime))
        out = SampleInput(InputSource(path=sample.record.output), sample.output_ext)
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

    def _member(self, name: str, item: SampleInput, mtime: int) -> _Member:
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


def _open_tar(files: ExitStack, path: Path) -> tarfile.TarFile:
    return files.enter_context(tarfile.open(path, "w", format=tarfile.PAX_FORMAT))


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
