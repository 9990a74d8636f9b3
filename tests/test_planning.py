"""Planning in one pass: each row is checked and planned into one ledger transaction, so an
invalid manifest plans nothing; items carry the request the ledger stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import PlanItem, write_csv

from batch.job import JobSpec
from batch.ledger import Ledger, canonical_json
from batch.ledger import request_hash as ledger_request_hash
from batch.ledger.plan import CHUNK
from batch.manifest import EditItem, ManifestCheck, ManifestError, iter_items
from batch.pipeline.planning import FINGERPRINT, plan_run
from batch.schema import DEFAULT_ENDPOINT


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def rows(n: int, start: int = 0, **fields: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"r{i:05d}", "prompt": f"edit {i}", "image_urls": [f"https://x.test/{i}.png"]}
        | fields
        for i in range(start, start + n)
    ]


def counts(ledger: Ledger) -> int:
    return sum(ledger.counts().values())


# --- an invalid manifest plans nothing -----------------------------------------------------


def test_bad_rows_after_chunks_of_good_ones_plan_nothing_and_are_all_reported(
    in_tmp: Path,
) -> None:
    """The bad rows come after two chunks were written in the transaction: rolled back."""
    good = rows(2 * CHUNK + 10)
    bad = [
        {"id": "bad-1", "prompt": "x", "image_urls": ["https://x.test/a.png"], "num_images": 9},
        {"id": "a/b", "prompt": "y", "image_urls": ["ftp://x.test/b.png"]},
    ]
    write_csv(in_tmp / "m.csv", [*good, *bad, *rows(5, start=90_000)])
    spec = JobSpec.for_manifest("m.csv", output=in_tmp / "out")
    with Ledger.open(spec.output) as ledger:
        with pytest.raises(ManifestError) as caught:
            plan_run(spec, ledger)
        assert counts(ledger) == 0
        assert ledger.get_meta(FINGERPRINT) is None
        line = len(good) + 2  # the header is line 1
        assert caught.value.errors == [
            f"m.csv:{line}: num_images: Input should be less than or equal to 4",
            f"m.csv:{line + 1}: id: must not contain '/', '\\' or NUL",
            f"m.csv:{line + 1}: image_urls[0]: not a valid URL or file path",
        ]
        # The ledger is usable afterwards: no transaction or temporary table is left behind.
        write_csv(in_tmp / "m.csv", good)
        planned = plan_run(spec, ledger)
        assert planned.counts["new"] == len(good) == counts(ledger)


def test_a_duplicate_id_with_another_request_plans_nothing(in_tmp: Path) -> None:
    write_csv(in_tmp / "m.csv", [*rows(3), rows(1, start=1, prompt="something else")[0]])
    spec = JobSpec.for_manifest("m.csv", output=in_tmp / "out")
    with Ledger.open(spec.output) as ledger:
        with pytest.raises(ManifestError, match=r"m\.csv:5: id: duplicate id 'r00001'"):
            plan_run(spec, ledger)
        assert counts(ledger) == 0


def test_manifest_check_stops_the_items_at_the_first_error_but_reads_on(in_tmp: Path) -> None:
    write_csv(
        in_tmp / "m.csv",
        [*rows(2), {"prompt": "no image"}, *rows(1, start=5), {"prompt": "", "image_urls": ["u"]}],
    )
    check = ManifestCheck("m.csv")
    seen: list[str] = []
    with pytest.raises(ManifestError) as caught:
        seen.extend(item.key for item in check.items())
    assert seen == ["r00000", "r00001"]
    assert [e.split(": ")[0] for e in caught.value.errors] == ["m.csv:4", "m.csv:6", "m.csv:6"]
    with pytest.raises(RuntimeError):
        check.summary  # noqa: B018 (the property raises: the manifest was invalid)

    lenient = ManifestCheck("m.csv", skip_invalid=True)
    assert [item.key for item in lenient.items()] == ["r00000", "r00001", "r00005"]
    assert (lenient.summary.items, lenient.summary.invalid_rows) == (3, 2)


# --- what the items carry is what the ledger stores ------------------------------------------


def test_items_carry_the_ledgers_canonical_request_and_hash(in_tmp: Path) -> None:
    write_csv(
        in_tmp / "m.csv",
        [
            {"prompt": 'café "quoted" \\ ✓', "image_urls": ["https://x.test/a.png"]},
            {"id": "k", "prompt": "p", "image_urls": ["https://x.test/b.png"], "seed": "7"},
        ],
    )
    made = list(iter_items("m.csv"))
    for item in made:
        assert item.request_json == canonical_json(item.payload)
        assert item.request_hash == ledger_request_hash(item.endpoint, item.payload)
    by_hand = EditItem("k", DEFAULT_ENDPOINT, made[1].payload, "m.csv:3", "k")
    assert by_hand == made[1]
    assert (by_hand.request_json, by_hand.request_hash) == (
        made[1].request_json,
        made[1].request_hash,
    )


@pytest.mark.parametrize("with_ids", [True, False])
def test_a_first_plan_and_a_full_replan_agree(in_tmp: Path, with_ids: bool) -> None:
    """The first plan (an empty ledger: bulk inserts) stores exactly what a replan of the same
    rows (a ledger with items: lookups) finds unchanged."""
    data = rows(CHUNK + 20)
    if not with_ids:
        data = [{k: v for k, v in row.items() if k != "id"} for row in data]
    data.append(data[3])  # a duplicate row: skipped with a warning, both times
    write_csv(in_tmp / "m.csv", data)
    spec = JobSpec.for_manifest("m.csv", output=in_tmp / "out")
    with Ledger.open(spec.output) as ledger:
        first = plan_run(spec, ledger)
        assert first.counts == {
            "new": CHUNK + 20,
            "completed": 0,
            "resume": 0,
            "changed": 0,
            "missing": 0,
        }
        assert any("duplicate of m.csv:5" in w for w in first.warnings)
        ledger.set_meta(FINGERPRINT, None)  # as if the manifest had changed: read it all again
        again = plan_run(spec, ledger)
        assert not again.reused
        assert again.counts == {**first.counts, "new": 0, "resume": CHUNK + 20}
        item = next(iter_items("m.csv"))
        row = ledger.get(item.key)
        assert row is not None
        assert (row.request, row.request_hash, row.source) == (
            item.request_json,
            item.request_hash,
            "m.csv:2",
        )


# --- Ledger.plan is one transaction ----------------------------------------------------------


def items(n: int, start: int = 0, prompt: str = "p") -> Iterator[PlanItem]:
    for i in range(start, start + n):
        yield PlanItem(f"k{i:05d}", {"prompt": f"{prompt} {i}", "image_urls": ["u"]}, f"m:{i}")


def failing(n: int) -> Iterator[PlanItem]:
    yield from items(n)
    raise RuntimeError("the manifest turned out invalid")


@pytest.mark.parametrize("known", [0, 3])
def test_an_exception_from_the_items_rolls_the_whole_plan_back(tmp_path: Path, known: int) -> None:
    with Ledger.open(tmp_path) as ledger:
        ledger.plan(items(known, prompt="old"))
        with pytest.raises(RuntimeError, match="turned out invalid"):
            ledger.plan(failing(2 * CHUNK + 1))
        assert counts(ledger) == known
        assert all(ledger.get(f"k{i:05d}") is not None for i in range(known))
        result = ledger.plan(items(known + 2, prompt="old"))
        assert (result.new, result.pending, result.missing) == (2, known, 0)


def test_keys_that_stop_ascending_are_staged_and_the_first_of_a_key_wins(tmp_path: Path) -> None:
    """A first plan inserts chunks as they come while their keys ascend, then stages the rest
    and sorts it in: both kinds of chunk count, and a repeated key keeps its first request."""
    with Ledger.open(tmp_path) as ledger:
        ascending = list(items(CHUNK + 5, start=100))  # k00100 … : two chunks, inserted at once
        later = [
            PlanItem("k00001", {"prompt": "late", "image_urls": ["u"]}),
            *items(3, start=50),
            PlanItem("k00100", {"prompt": "repeated", "image_urls": ["u"]}),
        ]
        result = ledger.plan([*ascending, *later])
        assert (result.total, result.new, result.duplicates) == (CHUNK + 9, CHUNK + 9, 1)
        assert counts(ledger) == CHUNK + 9
        first = ledger.get("k00100")
        assert first is not None and first.payload["prompt"] == "p 100"
        late = ledger.get("k00001")
        assert late is not None and late.payload["prompt"] == "late"


def test_duplicates_count_once_across_chunks_in_a_ledger_with_items(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        ledger.plan(items(1))
        repeated = [*items(3), *items(CHUNK + 10, start=3), *items(2)]
        result = ledger.plan(repeated)
        assert (result.total, result.new, result.pending) == (CHUNK + 13, CHUNK + 12, 1)
        assert result.duplicates == 2
