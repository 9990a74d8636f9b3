"""Shards: one job's items divided among N runs by a stable hash of each item's key.

    shard_of(key, N)   int.from_bytes(sha256(key)[:8], "big") % N — depends on the key alone,
                       so growing or reordering the manifest moves no item to another shard,
                       and one key (hence the duplicate-id check) stays in one shard
    parse_shard        ``--shard I/N`` (0-based) or ``--shard auto``: the index and count from
                       the environment (ours, a Kubernetes Indexed Job, a Slurm array)
    split_rows         a CSV or JSONL manifest → N manifests of the same format, one per shard,
                       each row in the shard of its item's key, written as the file has it

`KEY_FUNCTION` names the rule; a job records it with its N, so that a later version with another
rule refuses the job's shards instead of mixing two divisions. Errors are `ShardError`, an
input error (exit 2), one line each.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import os
import re
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from batch.errors import InvalidInputError
from batch.manifest import LocalFiles, ManifestCheck, display_path
from batch.manifest.localfiles import LOCAL_PREFIX
from batch.schema import DEFAULT_ENDPOINT

KEY_FUNCTION = "sha256-64-mod"
MAX_SHARDS = 100_000
AUTO = "auto"
# Where `--shard auto` looks, in this order.
OUR_INDEX, OUR_COUNT = "FIRERED_SHARD_INDEX", "FIRERED_SHARD_COUNT"
K8S_INDEX = "JOB_COMPLETION_INDEX"  # set in every pod of a Kubernetes Indexed Job
SLURM_ID, SLURM_MIN, SLURM_MAX = (
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
)
SLURM_COUNT, SLURM_STEP = "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP"
SPLIT_SUFFIXES = (".csv", ".jsonl")
_FLUSH_BYTES = 4 << 20  # rows buffered across all shards before they are appended to their files
_NUMBER = re.compile(r"-?[0-9]+")
Record = tuple[int, bytes, bool]  # a manifest record: its first line, its bytes, is it a header


class ShardError(InvalidInputError):
    """A shard that cannot be used: a bad ``--shard``, environment or split; exit 2."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``; `ShardError` unless 0 ≤ index < count ≤ 100000."""

    index: int
    count: int

    def __post_init__(self) -> None:
        problem = _range_problem(self.index, self.count)
        if problem:
            raise ShardError(f"shard {self.index}/{self.count}: {problem}")

    @property
    def label(self) -> str:
        """``00003-of-00008``: file and folder names sort in shard order."""
        return f"{self.index:05d}-of-{self.count:05d}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        """Whether the item of this key is this shard's."""
        return shard_of(key, self.count) == self.index


def shard_of(key: str, count: int) -> int:
    """The shard (0 to count − 1) of an item key: the first 64 bits of its sha256, mod count."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count


def _range_problem(index: int, count: int) -> str | None:
    if count < 1:
        return "the count must be at least 1"
    if count > MAX_SHARDS:
        return f"the count must be at most {MAX_SHARDS}"
    if index < 0:
        return "the index must be 0 or more (shards count from 0)"
    if index >= count:
        return f"the index must be below the count (0 to {count - 1}; shards count from 0)"
    return None


def _shard(index: int, count: int, where: str) -> Shard:
    problem = _range_problem(index, count)
    if problem:
        raise ShardError(f"{where}: {problem}")
    return Shard(index, count)


def parse_shard(text: str, env: Mapping[str, str]) -> Shard:
    """``I/N`` (``3/8``: the fourth of eight), or ``auto``: from ``env`` (see `shard_from_env`)."""
    spec = text.strip()
    if spec.lower() == AUTO:
        return shard_from_env(env)
    where = f"--shard {text}"
    index_text, slash, count_text = spec.partition("/")
    index_text, count_text = index_text.strip(), count_text.strip()
    if not (slash and _NUMBER.fullmatch(index_text) and _NUMBER.fullmatch(count_text)):
        raise ShardError(f"{where}: expected INDEX/COUNT with whole numbers (e.g. 0/4), or auto")
    return _shard(int(index_text), int(count_text), where)


def shard_from_env(env: Mapping[str, str]) -> Shard:
    """The shard ``--shard auto`` means, from the first of these that is set:

    - ``FIRERED_SHARD_INDEX`` and ``FIRERED_SHARD_COUNT``;
    - ``JOB_COMPLETION_INDEX`` (a Kubernetes Indexed Job), with ``FIRERED_SHARD_COUNT``:
      Kubernetes does not pass the number of indexes, so the pod must (= ``spec.completions``);
    - ``SLURM_ARRAY_TASK_ID`` (a Slurm array): index = ID − ``SLURM_ARRAY_TASK_MIN``, count =
      ``SLURM_ARRAY_TASK_COUNT``; an array with a step or gaps (``--array=0-6:2``, ``1,3,9``)
      is refused, since its IDs are not 0 to N − 1 once shifted.
    """
    if OUR_INDEX in env:
        if OUR_COUNT not in env:
            raise ShardError(f"--shard auto: {OUR_INDEX} is set but {OUR_COUNT} is not")
        return _shard(_int(env, OUR_INDEX), _int(env, OUR_COUNT), _where(env, OUR_INDEX))
    if K8S_INDEX in env:
        if OUR_COUNT not in env:
            raise ShardError(
                f"--shard auto: {K8S_INDEX} is set (a Kubernetes Indexed Job) but {OUR_COUNT}"
                " is not: Kubernetes does not pass the number of indexes; set it in the pod's"
                " env to the Job's spec.completions"
            )
        return _shard(_int(env, K8S_INDEX), _int(env, OUR_COUNT), _where(env, K8S_INDEX))
    if SLURM_ID in env:
        return _slurm_shard(env)
    looked = ", ".join((f"{OUR_INDEX} + {OUR_COUNT}", f"{K8S_INDEX} + {OUR_COUNT}", SLURM_ID))
    raise ShardError(f"--shard auto: no shard in the environment (looked for {looked})")


def _slurm_shard(env: Mapping[str, str]) -> Shard:
    task, low, high, count = (_int(env, v) for v in (SLURM_ID, SLURM_MIN, SLURM_MAX, SLURM_COUNT))
    step = _int(env, SLURM_STEP) if SLURM_STEP in env else 1
    array = f"the Slurm array ({SLURM_MIN}={low}, {SLURM_MAX}={high}, {SLURM_COUNT}={count}"
    if step != 1:
        raise ShardError(
            f"--shard auto: {array}, {SLURM_STEP}={step}) has a step: submit --array=0-{count - 1}"
        )
    if high - low + 1 != count:
        raise ShardError(
            f"--shard auto: {array}) has gaps: submit a range without gaps, --array=0-{count - 1}"
        )
    if OUR_COUNT in env and _int(env, OUR_COUNT) != count:
        raise ShardError(
            f"--shard auto: {OUR_COUNT}={env[OUR_COUNT]} but {array}) has {count} tasks"
        )
    return _shard(task - low, count, f"--shard auto: {SLURM_ID}={task} in {array})")


def _int(env: Mapping[str, str], name: str) -> int:
    text = env.get(name)
    if text is None:
        raise ShardError(f"--shard auto: {name} is not set")
    if not _NUMBER.fullmatch(text.strip()):
        raise ShardError(f"--shard auto: {name}={text!r} is not a whole number")
    return int(text)


def _where(env: Mapping[str, str], name: str) -> str:
    return f"--shard auto: {name}={env[name]}, {OUR_COUNT}={env.get(OUR_COUNT)}"


def shard_path(manifest: str | os.PathLike[str], shard: Shard, out_dir: Path | None = None) -> Path:
    """Where `split_rows` writes a shard: ``<stem>.shard-00003-of-00008<suffix>``, by default
    beside the manifest."""
    path = Path(manifest)
    folder = path.parent if out_dir is None else Path(out_dir)
    return folder / f"{path.stem}.shard-{shard.label}{path.suffix}"


def split_rows(
    manifest: str | os.PathLike[str],
    count: int,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    defaults: Mapping[str, Any] | None = None,
    files: LocalFiles | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> tuple[int, ...]:
    """Write the ``count`` shards of a CSV or JSONL manifest (at `shard_path`); the rows of each.

    ``endpoint``, ``defaults`` and ``files`` are the job's (`JobSpec.endpoint`, ``.defaults``,
    ``LocalFiles(spec.image_limits)``), as `batch.manifest.ManifestCheck` takes them: a key
    without an ``id`` is a hash of the request they help make. The manifest is read as a run
    reads it, one row at a time; each valid row goes, as the file has it (a CSV's header heads
    every shard), to the shard of its item's key. Duplicate rows are left out. Shard files are
    written in full, or not at all: an invalid manifest raises `ManifestError` and leaves none.
    A split that would leave a shard without rows is refused (`ShardError`): a run refuses an
    empty manifest.

    Local images are named relative to the manifest's folder, so a manifest that has some is
    split only into that folder (``out_dir`` None or the same).
    """
    path = Path(manifest)
    suffix = path.suffix.lower()
    if suffix not in SPLIT_SUFFIXES:
        raise ShardError(
            f"{display_path(path)}: only CSV and JSONL manifests are split (a YAML manifest is"
            " read whole anyway: give each shard the whole file with --shard I/N)"
        )
    _shard(0, count, f"split into {count} shards")
    home = path.resolve().parent
    folder = home if out_dir is None else Path(out_dir).resolve()
    check = ManifestCheck(path, endpoint=endpoint, defaults=defaults, files=files)
    writer = _ShardWriter([shard_path(path, Shard(i, count), folder) for i in range(count)])
    records = _csv_records(path) if suffix == ".csv" else _jsonl_records(path)
    try:
        for item in check.items():
            if folder != home and _has_local_image(item.payload):
                raise ShardError(
                    f"{item.source}: local images are named relative to the manifest's folder:"
                    " split it into that folder"
                )
            raw = _record_at(records, int(item.source.rpartition(":")[2]), writer)
            writer.add(shard_of(item.key, count), raw)
        if empty := [i for i, n in enumerate(writer.rows) if n == 0]:
            # A run refuses an empty manifest (exit 2), which would fail a Kubernetes Job.
            raise ShardError(
                f"{display_path(path)}: {count} shards leave shard {empty[0]} (and"
                f" {len(empty) - 1} more) without rows; split into fewer"
            )
        writer.close()
    except BaseException:
        writer.discard()
        raise
    finally:
        records.close()
    return tuple(writer.rows)


def _record_at(records: Generator[Record, None, None], line: int, writer: _ShardWriter) -> bytes:
    """The bytes of the record that starts at ``line`` (the header, passed, goes to ``writer``)."""
    for number, raw, is_header in records:
        if is_header:
            writer.header = raw
        if number == line:
            return raw
    raise AssertionError(f"line {line} not found again in the file")


def _has_local_image(payload: Mapping[str, Any]) -> bool:
    return any(str(url).startswith(LOCAL_PREFIX) for url in payload.get("image_urls", ()))


def _jsonl_records(path: Path) -> Generator[Record, None, None]:
    """(line, the line's bytes, False) for each line of a JSONL file."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            yield number, raw, False


def _csv_records(path: Path) -> Generator[Record, None, None]:
    """(first line, the bytes of its lines, is it the header?) for each record of a CSV file,
    its lines numbered as `batch.manifest.readers` numbers them (a quoted cell may span lines).
    A UTF-8 BOM is left out."""
    taken: list[bytes] = []

    def lines(fh: BinaryIO) -> Iterator[str]:
        for number, raw in enumerate(fh):
            taken.append(raw if number else raw.removeprefix(codecs.BOM_UTF8))
            yield taken[-1].decode("utf-8")

    with path.open("rb") as fh:
        reader = csv.reader(lines(fh), strict=True)
        seen_header = False
        start = 1
        for cells in reader:
            raw = b"".join(taken)
            taken.clear()
            blank = not any(c.strip() for c in cells)
            yield start, raw, not blank and not seen_header
            seen_header = seen_header or not blank
            start = reader.line_num + 1


class _ShardWriter:
    """Rows into N temporary files, buffered (a few MiB in all) and appended one file at a time,
    so that neither the rows nor N open files are held; `close` renames them into place."""

    def __init__(self, targets: list[Path]) -> None:
        self.targets = targets
        self.temps = [t.with_name(f".{t.name}.{os.getpid()}.tmp") for t in targets]
        self.header = b""  # a CSV's header row: the first line of every shard
        self.rows = [0] * len(targets)
        self._buffers: list[list[bytes]] = [[] for _ in targets]
        self._buffered = 0
        self._started = False

    def add(self, index: int, raw: bytes) -> None:
        if not raw.endswith(b"\n"):
            raw += b"\n"
        self._buffers[index].append(raw)
        self.rows[index] += 1
        self._buffered += len(raw)
        if self._buffered >= _FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._started:  # every shard's file starts with the header, rows or not
            self._started = True
            header = self.header
            if header and not header.endswith(b"\n"):
                header += b"\n"
            self.targets[0].parent.mkdir(parents=True, exist_ok=True)
            for temp in self.temps:
                temp.write_bytes(header)
        for temp, buffer in zip(self.temps, self._buffers, strict=True):
            if buffer:
                with temp.open("ab") as fh:
                    fh.writelines(buffer)
                buffer.clear()
        self._buffered = 0

    def close(self) -> None:
        self._flush()
        for temp, target in zip(self.temps, self.targets, strict=True):
            os.replace(temp, target)

    def discard(self) -> None:
        for temp in self.temps:
            temp.unlink(missing_ok=True)
