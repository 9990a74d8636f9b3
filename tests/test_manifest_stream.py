"""Manifests are streamed: items come one row at a time, never the whole file in memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from batch.manifest import ManifestError, iter_items

ROWS = 50_000


def big_csv(path: Path, tail: str = "") -> Path:
    with path.open("w", encoding="utf-8") as fh:
        fh.write("id,prompt,image_urls,seed\n")
        for i in range(ROWS):
            fh.write(f"row-{i},把第 {i} 张图变成蓝色,https://img.test/{i}.png,{i}\n")
        fh.write(tail)
    return path


def test_first_item_comes_before_the_file_is_read(tmp_path: Path) -> None:
    """The end of this file is broken, so reading it all would raise; the first item does not."""
    path = big_csv(tmp_path / "big.csv", tail='row-x,"never closed,https://img.test/x.png,1\n')
    items = iter_items(path)
    first = next(items)
    assert (first.key, first.source) == ("row-0", f"{path}:2")
    with pytest.raises(ManifestError, match=r"big\.csv:50002: CSV error: unexpected end of data"):
        for _ in items:
            pass


def test_first_item_allocates_far_less_than_the_file(tmp_path: Path) -> None:
    path = big_csv(tmp_path / "big.csv")
    size = path.stat().st_size
    assert size > 3_000_000
    tracemalloc.start()
    try:
        items = iter_items(path)
        first = next(items)
        _, peak = tracemalloc.get_traced_memory()
        items.close()
    finally:
        tracemalloc.stop()
    assert first.key == "row-0"
    assert peak < size / 10
