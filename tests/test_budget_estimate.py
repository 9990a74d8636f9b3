"""The dry run's estimate of the work to send (`work_estimate`): one SQL query over the ledger,
which must agree with decoding every pending request in Python (`work_estimate_by_rows`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import PlanItem, png_uri

from batch.ledger import Ledger, spend
from batch.ledger.spend import work_estimate, work_estimate_by_rows
from batch.manifest.localfiles import LOCAL_PREFIX, LocalFile
from batch.manifest.pricing import Estimate

ENDPOINT = "fal-ai/firered-image-edit"
SHA = "ab" * 32  # a local file the ledger knows: 800×500
UNKNOWN_SHA = "cd" * 32  # a local reference the ledger does not know


def _payload(i: int, **fields: Any) -> dict[str, Any]:
    return {"prompt": f"p{i}", "image_urls": [f"https://x.test/{i}.png"], **fields}


ITEMS = [
    PlanItem("preset", _payload(0, image_size="square_hd", num_images=2)),  # 2 × 1024²
    PlanItem("preset-b", _payload(1, image_size="square_hd", num_images=2)),  # same basis
    PlanItem("mapping", _payload(2, image_size={"width": 500, "height": 400})),  # 1 × 0.2 MP
    PlanItem("remote", _payload(3, num_images=3)),  # 3 images, size unknown
    PlanItem("remote-b", _payload(4)),  # 1 image, size unknown
    PlanItem("inline", _payload(5, image_urls=[png_uri(40, 25), "https://x.test/b.png"])),
    PlanItem("local", _payload(6, image_urls=[LOCAL_PREFIX + SHA], num_images=4)),
    PlanItem("local-unknown", _payload(7, image_urls=[LOCAL_PREFIX + UNKNOWN_SHA])),
    PlanItem(
        "local-then-remote", _payload(8, image_urls=["https://x.test/a.png", LOCAL_PREFIX + SHA])
    ),
    PlanItem("sized-local", _payload(9, image_urls=[LOCAL_PREFIX + SHA], image_size="square")),
    PlanItem("null-size", _payload(10, image_urls=[LOCAL_PREFIX + SHA], image_size=None)),
    PlanItem("odd-count", _payload(11, num_images=0, image_size="square")),  # counted as 1 image
    PlanItem("bad-size", _payload(12, image_size="huge")),  # not a known size: unknown
    PlanItem(
        "unicode", _payload(13, prompt='把这张照片变成水墨画风格 \u2028 "q"', image_size="square")
    ),
    # states and listings that are not sent by a run:
    PlanItem("submitted", _payload(20, image_size="square_hd")),
    PlanItem("completed", _payload(21, image_size="square_hd")),
    PlanItem("failed", _payload(22, image_size="square_hd")),
    PlanItem("gone", _payload(23, image_size="square_hd")),  # no longer in the manifest
]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "out") as led:
        led.plan(ITEMS)
        led.uploads.record_files(
            [LocalFile(SHA, str(tmp_path / "p.png"), 10, 1, 1, "image/png", 800, 500)]
        )
        led.mark_submitted("submitted", "r1", None, None, None)
        led.mark_submitted("completed", "r2", None, None, None)
        led.mark_completed("completed", [], seed=1, timings=None, nsfw=None)
        led.mark_failed("failed", "validation", "bad")
        led.plan([i for i in ITEMS if i.key != "gone"])  # "gone" is kept, in_manifest = 0
        yield led


def _expected() -> Estimate:
    e = Estimate()
    e.add(2, 2 * 1024 * 1024, times=2)  # preset, preset-b
    e.add(1, 500 * 400)  # mapping
    e.add(3, None)  # remote
    e.add(1, None)  # remote-b
    e.add(1, 40 * 25)  # inline
    e.add(4, 4 * 800 * 500)  # local
    e.add(1, None)  # local-unknown
    e.add(1, None)  # local-then-remote: the first input is remote
    e.add(1, 512 * 512)  # sized-local
    e.add(1, 800 * 500)  # null-size
    e.add(1, 512 * 512)  # odd-count
    e.add(1, None)  # bad-size
    e.add(1, 512 * 512)  # unicode
    return e


def test_the_estimate_counts_the_pending_items_of_the_manifest_by_their_output_basis(
    ledger: Ledger,
) -> None:
    assert ledger.counts() == {"pending": 15, "submitted": 1, "completed": 1, "failed": 1}
    expected = _expected()
    assert work_estimate_by_rows(ledger) == expected
    assert work_estimate(ledger) == expected


def test_without_sqlite_json_functions_the_rows_are_decoded(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spend, "_WORK_BASIS", "SELECT json_nonesuch(request) FROM items")
    assert work_estimate(ledger) == _expected()
    monkeypatch.setattr(spend, "_WORK_BASIS", "SELECT nonesuch(request) FROM items")
    with pytest.raises(sqlite3.OperationalError, match="no such function: nonesuch"):
        work_estimate(ledger)  # another error is not hidden


def test_an_empty_ledger_sends_nothing(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "out") as led:
        assert work_estimate(led) == Estimate()
