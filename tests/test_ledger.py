"""The results ledger: migrations, planning, transitions, reads, runs and exports."""

from __future__ import annotations

import csv
import json
import sqlite3
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import PlanItem

import batch.ledger.export as export_mod
from batch.ledger import (
    InvalidTransitionError,
    ItemState,
    Ledger,
    UnknownItemError,
    canonical_json,
    request_hash,
)
from batch.ledger import migrations as mig
from batch.ledger.export import FIELDS
from batch.outputs.naming import OutputRecord

ENDPOINT = "fal-ai/firered-image-edit"

SHIPPED = [name for name, _ in mig.MIGRATIONS]  # the migrations this version ships


@dataclass
class Clock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def items(n: int, *, prompt: str = "make it blue", start: int = 0) -> list[PlanItem]:
    return [
        PlanItem(
            f"k{i:04d}",
            {"prompt": f"{prompt} {i}", "image_urls": [f"https://x/{i}.png"]},
            f"m.csv:{i + 2}",
        )
        for i in range(start, start + n)
    ]


def record(index: int, key: str = "k0000") -> OutputRecord:
    return OutputRecord(
        index=index,
        path=f"images/{key}-{index}.png",
        url=f"https://cdn/{key}/{index}.png",
        bytes=100 + index,
        sha256=f"{index:064x}",
        width=64,
        height=48,
        content_type="image/png",
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "out", clock=clock) as led:
        yield led


def submit(led: Ledger, key: str, rid: str = "req-1") -> None:
    led.mark_submitted(key, rid, f"https://q/{rid}/status", f"https://q/{rid}", None)


# --- opening and migrations ----------------------------------------------------------------


def test_open_creates_folder_records_migrations_and_reopen_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    with Ledger.open(out) as led:
        assert led.applied_migrations() == SHIPPED
        assert led.path == out / "ledger.sqlite"
        led.plan(items(3))
    with Ledger.open(out) as led:
        assert led.applied_migrations() == SHIPPED
        assert led.counts()["pending"] == 3
    conn = sqlite3.connect(out / "ledger.sqlite")
    try:
        assert conn.execute("SELECT count(*) FROM migrations").fetchone() == (len(SHIPPED),)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"items", "outputs", "runs", "migrations"} <= tables
        assert "thumbnails" not in tables
    finally:
        conn.close()


def test_a_later_migration_is_applied_once_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding a table later is one more registered function."""
    with Ledger.open(tmp_path):
        pass
    calls: list[str] = []

    def m099_thumbnails(conn: sqlite3.Connection) -> None:
        calls.append("m002")
        conn.execute("CREATE TABLE thumbnails (sha256 TEXT PRIMARY KEY, url TEXT NOT NULL)")

    monkeypatch.setattr(mig, "MIGRATIONS", [*mig.MIGRATIONS, ("m099_thumbnails", m099_thumbnails)])
    with Ledger.open(tmp_path) as led:
        assert led.applied_migrations() == [*SHIPPED, "m099_thumbnails"]
    with Ledger.open(tmp_path) as led:
        assert led.applied_migrations() == [*SHIPPED, "m099_thumbnails"]
    assert calls == ["m002"]


def test_a_failing_migration_is_rolled_back_and_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def m099_broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(mig, "MIGRATIONS", [*mig.MIGRATIONS, ("m099_broken", m099_broken)])
    with pytest.raises(RuntimeError, match="boom"):
        Ledger.open(tmp_path)
    conn = sqlite3.connect(tmp_path / "ledger.sqlite")
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM migrations")]
        assert names == SHIPPED
        half = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchone()
        assert half is None
    finally:
        conn.close()


def test_duplicate_migration_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        mig.migration(mig.m001_initial)
    assert [name for name, _ in mig.MIGRATIONS].count("m001_initial") == 1


def test_wal_mode_and_busy_timeout(ledger: Ledger) -> None:
    conn = sqlite3.connect(ledger.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert ledger._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert ledger._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


# --- plan ----------------------------------------------------------------------------------


def test_plan_inserts_new_items_pending_with_canonical_request(ledger: Ledger) -> None:
    item = PlanItem("a", {"prompt": "café", "image_urls": ["u"], "seed": 3}, "jobs/m.yaml:7")
    result = ledger.plan([item])
    assert (result.total, result.new, result.to_do) == (1, 1, 1)
    row = ledger.get("a")
    assert row is not None
    assert row.state is ItemState.pending
    assert (row.source, row.endpoint, row.attempts, row.in_manifest) == (
        "jobs/m.yaml:7",
        ENDPOINT,
        0,
        True,
    )
    assert row.request == '{"image_urls":["u"],"prompt":"café","seed":3}'
    assert row.payload == item.payload
    assert row.request_hash == request_hash(ENDPOINT, item.payload)
    expected = canonical_json({"endpoint": ENDPOINT, "payload": item.payload})
    assert json.loads(expected) == {"endpoint": ENDPOINT, "payload": item.payload}
    assert ledger.get("nope") is None


def test_replan_counts_completed_resumed_failed_and_skips_nothing_twice(ledger: Ledger) -> None:
    ledger.plan(items(5))
    submit(ledger, "k0000")
    ledger.mark_completed("k0000", [record(0)], seed=1, timings={}, nsfw=[False])
    submit(ledger, "k0001")
    ledger.mark_failed("k0002", "permanent", "422: bad prompt")
    result = ledger.plan(items(6))
    assert (result.total, result.new, result.completed) == (6, 1, 1)
    assert (result.pending, result.submitted, result.failed) == (2, 1, 1)
    assert (result.changed, result.missing, result.duplicates) == (0, 0, 0)
    assert result.resume == 3
    assert result.to_do == 4
    assert ledger.counts() == {"pending": 3, "submitted": 1, "completed": 1, "failed": 1}
    states = [ledger.state(k) for k in ("k0000", "k0001", "k0002", "k0005", "nope")]
    assert states == ["completed", "submitted", "failed", "pending", None]


def test_changed_request_is_a_conflict_and_the_item_is_left_alone(ledger: Ledger) -> None:
    ledger.plan(items(3))
    submit(ledger, "k0001")
    changed = [*items(1), *items(2, prompt="make it red", start=1)]
    changed[2] = PlanItem(changed[2].key, changed[2].payload, "m2.csv:9")
    result = ledger.plan(changed)
    assert result.changed == 2
    assert {(c.key, c.source, c.previous_source) for c in result.conflicts} == {
        ("k0001", "m.csv:3", "m.csv:3"),
        ("k0002", "m2.csv:9", "m.csv:4"),
    }
    row = ledger.get("k0001")
    assert row is not None
    assert (row.state, row.request_id) == (ItemState.submitted, "req-1")
    assert row.payload["prompt"] == "make it blue 1"


def test_conflict_list_is_capped_but_the_count_is_not(ledger: Ledger) -> None:
    ledger.plan(items(30))
    result = ledger.plan(items(30, prompt="other"), conflict_limit=5)
    assert result.changed == 30
    assert len(result.conflicts) == 5


def test_redo_changed_resets_the_item_with_the_new_request_and_drops_outputs(
    ledger: Ledger,
) -> None:
    ledger.plan(items(2))
    submit(ledger, "k0000")
    ledger.mark_completed("k0000", [record(0), record(1)], seed=9, timings={"t": 1}, nsfw=[])
    new = items(1, prompt="make it red")
    result = ledger.plan([*new, *items(1, start=1)], redo_changed=True)
    assert (result.changed, result.conflicts, result.pending) == (1, (), 1)
    assert result.to_do == 2
    row = ledger.get("k0000")
    assert row is not None
    assert row.state is ItemState.pending
    assert (row.attempts, row.request_id, row.seed, row.completed_at) == (0, None, None, None)
    assert row.payload == new[0].payload
    assert row.request_hash == request_hash(ENDPOINT, new[0].payload)
    assert ledger.outputs("k0000") == []


def test_missing_items_are_flagged_and_restored_when_listed_again(ledger: Ledger) -> None:
    ledger.plan(items(10))
    result = ledger.plan(items(7))
    assert result.missing == 3
    row = ledger.get("k0009")
    assert row is not None and row.in_manifest is False
    row = ledger.get("k0006")
    assert row is not None and row.in_manifest is True
    result = ledger.plan(items(10))
    assert result.missing == 0
    row = ledger.get("k0009")
    assert row is not None and row.in_manifest is True


def test_duplicate_keys_count_once_even_across_chunks(ledger: Ledger) -> None:
    batch = [*items(3), items(1)[0], *items(6000, start=3), items(1, start=2)[0]]
    result = ledger.plan(batch)
    assert (result.total, result.new, result.duplicates) == (6003, 6003, 2)


def test_plan_updates_the_source_of_a_moved_row(ledger: Ledger) -> None:
    ledger.plan(items(1))
    moved = PlanItem("k0000", items(1)[0].payload, "m.csv:40")
    result = ledger.plan([moved])
    assert (result.pending, result.changed) == (1, 0)
    row = ledger.get("k0000")
    assert row is not None and row.source == "m.csv:40"


def test_plan_with_a_caller_hasher_uses_it(ledger: Ledger) -> None:
    calls: list[str] = []

    def hasher(endpoint: str, payload: Any) -> str:
        calls.append(endpoint)
        return "h-" + str(payload["prompt"])

    ledger.plan(items(2), hasher=hasher)
    row = ledger.get("k0001")
    assert row is not None and row.request_hash == "h-make it blue 1"
    assert calls == [ENDPOINT, ENDPOINT]


@pytest.mark.timeout(180)  # tracemalloc slows Python several times over
def test_plan_of_100k_items_runs_in_bounded_memory(tmp_path: Path) -> None:
    """Peak Python memory stays far below what holding every item or row would take."""

    def stream(n: int) -> Iterator[PlanItem]:
        for i in range(n):
            yield PlanItem(f"item-{i:07d}", {"prompt": f"p{i}", "image_urls": ["u"]}, f"m:{i}")

    with Ledger.open(tmp_path) as led:
        tracemalloc.start()
        try:
            result = led.plan(stream(100_000))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.new == 100_000
        assert led.counts()["pending"] == 100_000
    # 100k items kept in a list take ~50 MB, a set of their keys ~10 MB; a chunk of 5,000
    # items is a few MB (about 6 MB measured).
    assert peak < 12 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


# --- transitions ---------------------------------------------------------------------------


def test_mark_submitted_records_the_request_and_counts_the_attempt(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.plan(items(1))
    ledger.mark_retry("k0000", "transient", "reset", not_before=5.0)
    ledger.mark_submitted("k0000", "r1", "https://q/s", "https://q/r", "https://q/c")
    row = ledger.get("k0000")
    assert row is not None
    assert row.state is ItemState.submitted
    assert (row.request_id, row.status_url, row.response_url, row.cancel_url) == (
        "r1",
        "https://q/s",
        "https://q/r",
        "https://q/c",
    )
    assert row.attempts == 2  # the unsubmitted try, then this one
    assert row.submitted_at == clock.now - 1  # the clock is read again for updated_at
    assert row.not_before is None
    assert row.possible_duplicate is False


def test_possible_duplicate_is_sticky_across_submits(ledger: Ledger) -> None:
    ledger.plan(items(1))
    ledger.mark_submitted("k0000", "r1", None, None, None, possible_duplicate=True)
    ledger.mark_retry("k0000", "transient", "lost", None)
    ledger.mark_submitted("k0000", "r2", None, None, None)
    row = ledger.get("k0000")
    assert row is not None and row.possible_duplicate is True and row.attempts == 2


def test_mark_ambiguous_flags_the_item(ledger: Ledger) -> None:
    ledger.plan(items(1))
    ledger.mark_ambiguous("k0000")
    row = ledger.get("k0000")
    assert row is not None and row.possible_duplicate is True
    assert row.state is ItemState.pending


def test_mark_completed_writes_outputs_and_results_together(ledger: Ledger) -> None:
    ledger.plan(items(1))
    submit(ledger, "k0000")
    ledger.mark_retry("k0000", "transient", "500", None)
    submit(ledger, "k0000", "req-2")
    outs = [record(0), record(1)]
    ledger.mark_completed("k0000", outs, seed=42, timings={"inference": 1.5}, nsfw=[False, True])
    row = ledger.get("k0000")
    assert row is not None
    assert row.state is ItemState.completed
    assert (row.seed, row.timings, row.nsfw) == (42, {"inference": 1.5}, [False, True])
    assert row.completed_at is not None
    assert (row.error_kind, row.error_message) == (None, None)
    assert row.request_id == "req-2"
    assert ledger.outputs("k0000") == outs


def test_mark_completed_refuses_unsafe_paths_and_duplicate_indexes(ledger: Ledger) -> None:
    ledger.plan(items(1))
    submit(ledger, "k0000")
    bad = OutputRecord(0, "../escape.png", "u", 1, "0" * 64, 1, 1, "image/png")
    with pytest.raises(ValueError, match="unsafe"):
        ledger.mark_completed("k0000", [bad], seed=None, timings=None, nsfw=None)
    with pytest.raises(ValueError, match="duplicate"):
        ledger.mark_completed("k0000", [record(0), record(0)], seed=None, timings=None, nsfw=None)
    row = ledger.get("k0000")
    assert row is not None and row.state is ItemState.submitted
    assert ledger.outputs("k0000") == []


def test_mark_completed_from_pending_is_refused_and_writes_nothing(ledger: Ledger) -> None:
    ledger.plan(items(1))
    with pytest.raises(InvalidTransitionError, match="is pending"):
        ledger.mark_completed("k0000", [record(0)], seed=1, timings=None, nsfw=None)
    assert ledger.outputs("k0000") == []


def test_mark_failed_keeps_the_request_id_and_records_the_error(ledger: Ledger) -> None:
    ledger.plan(items(2))
    submit(ledger, "k0000")
    ledger.mark_failed("k0000", "permanent", "422: prompt too long")
    ledger.mark_failed("k0001", "invalid", "never sent")
    row = ledger.get("k0000")
    assert row is not None
    assert (row.state, row.error_kind, row.error_message) == (
        ItemState.failed,
        "permanent",
        "422: prompt too long",
    )
    assert (row.request_id, row.attempts) == ("req-1", 1)
    row = ledger.get("k0001")
    assert row is not None and row.attempts == 1


def test_mark_retry_goes_back_to_pending_without_a_request_id(ledger: Ledger) -> None:
    ledger.plan(items(1))
    submit(ledger, "k0000")
    ledger.mark_retry("k0000", "transient", "502 bad gateway", not_before=1234.5)
    row = ledger.get("k0000")
    assert row is not None
    assert row.state is ItemState.pending
    assert (row.request_id, row.status_url, row.response_url, row.cancel_url) == (None,) * 4
    assert (row.not_before, row.error_kind, row.attempts) == (1234.5, "transient", 1)


def test_finished_items_refuse_further_transitions(ledger: Ledger) -> None:
    ledger.plan(items(2))
    submit(ledger, "k0000")
    ledger.mark_completed("k0000", [], seed=None, timings=None, nsfw=None)
    ledger.mark_failed("k0001", "permanent", "no")
    for key in ("k0000", "k0001"):
        with pytest.raises(InvalidTransitionError):
            submit(ledger, key)
        with pytest.raises(InvalidTransitionError):
            ledger.mark_retry(key, "transient", "x", None)
        with pytest.raises(InvalidTransitionError):
            ledger.mark_ambiguous(key)
    with pytest.raises(InvalidTransitionError, match="is completed"):
        ledger.mark_failed("k0000", "permanent", "x")


def test_unknown_keys_raise(ledger: Ledger) -> None:
    with pytest.raises(UnknownItemError, match="missing"):
        submit(ledger, "missing")
    with pytest.raises(KeyError):
        ledger.mark_failed("missing", "x", "y")


def test_reset_to_pending_by_keys_and_by_kind(ledger: Ledger) -> None:
    ledger.plan(items(5))
    for key in ("k0000", "k0001", "k0002"):
        submit(ledger, key)
    ledger.mark_failed("k0000", "permanent", "a")
    ledger.mark_failed("k0001", "timeout", "b")
    ledger.mark_failed("k0002", "timeout", "c")
    ledger.mark_failed("k0003", "permanent", "d")
    assert ledger.reset_to_pending(["k0000", "k0004"]) == 1  # k0004 is not failed
    assert ledger.reset_to_pending(kind="timeout") == 2
    row = ledger.get("k0001")
    assert row is not None
    assert (row.state, row.attempts, row.request_id, row.status_url, row.error_kind) == (
        ItemState.pending,
        0,
        None,
        None,
        None,
    )
    assert ledger.counts() == {"pending": 4, "submitted": 0, "completed": 0, "failed": 1}
    assert ledger.reset_to_pending() == 1
    assert ledger.counts()["failed"] == 0


def test_reset_reattaches_download_failures_to_their_paid_request(ledger: Ledger) -> None:
    """A request that succeeded at fal is collected again, never submitted again."""
    ledger.plan(items(3))
    submit(ledger, "k0000", "req-paid")
    ledger.mark_failed("k0000", "download", "image 0: HTTP 404")
    ledger.mark_failed("k0001", "download", "no request id to re-attach to")
    submit(ledger, "k0002", "req-x")
    ledger.mark_failed("k0002", "download", "x")
    assert ledger.reset_to_pending(["k0000", "k0001"]) == 2
    row = ledger.get("k0000")
    assert row is not None
    assert (row.state, row.request_id, row.status_url, row.attempts, row.error_kind) == (
        ItemState.submitted,
        "req-paid",
        "https://q/req-paid/status",
        0,
        None,
    )
    row = ledger.get("k0001")
    assert row is not None and (row.state, row.request_id) == (ItemState.pending, None)
    assert ledger.reset_to_pending(["k0002"], reattach_kinds=()) == 1
    row = ledger.get("k0002")
    assert row is not None and (row.state, row.request_id) == (ItemState.pending, None)


def test_run_id_is_stamped_on_changed_items(ledger: Ledger) -> None:
    ledger.plan(items(2))
    run_id = ledger.start_run({"concurrency": 4})
    submit(ledger, "k0000")
    row0, row1 = ledger.get("k0000"), ledger.get("k0001")
    assert row0 is not None and row0.run_id == run_id
    assert row1 is not None and row1.run_id is None


# --- reads ---------------------------------------------------------------------------------


def test_iter_work_yields_pending_and_submitted_in_key_order_in_batches(ledger: Ledger) -> None:
    ledger.plan(items(25))
    submit(ledger, "k0003")
    submit(ledger, "k0004")
    ledger.mark_completed("k0004", [], seed=None, timings=None, nsfw=None)
    ledger.mark_failed("k0005", "permanent", "x")
    submit(ledger, "k0024")
    ledger.plan(items(20))  # k0020..k0024 leave the manifest; submitted k0024 stays work
    seen = []
    work = ledger.iter_work(batch_size=4)
    for row in work:
        assert not ledger._conn.in_transaction  # no read held open between batches
        seen.append((row.key, row.state))
    expected = [f"k{i:04d}" for i in range(20) if i not in (4, 5)] + ["k0024"]
    assert [key for key, _ in seen] == expected
    assert dict(seen)["k0003"] is ItemState.submitted


def test_iter_work_tolerates_changes_while_iterating(ledger: Ledger) -> None:
    ledger.plan(items(10))
    keys = []
    for row in ledger.iter_work(batch_size=3):
        keys.append(row.key)
        submit(ledger, row.key)
        ledger.mark_completed(row.key, [], seed=None, timings=None, nsfw=None)
    assert keys == [f"k{i:04d}" for i in range(10)]
    assert list(ledger.iter_work()) == []


def test_failures_are_grouped_by_kind_with_an_example(ledger: Ledger) -> None:
    ledger.plan(items(6))
    ledger.mark_failed("k0000", "download", "404 on cdn")
    ledger.mark_failed("k0001", "permanent", "422: a")
    ledger.mark_failed("k0002", "permanent", "422: b")
    ledger.mark_failed("k0003", "permanent", "422: c")
    groups = ledger.failures(limit=5)
    assert [(g.kind, g.count) for g in groups] == [("permanent", 3), ("download", 1)]
    assert (groups[0].example_key, groups[0].example_message) == ("k0001", "422: a")
    assert len(ledger.failures(limit=1)) == 1


# --- runs ----------------------------------------------------------------------------------


def test_runs_record_settings_without_secrets_and_the_outcome(ledger: Ledger) -> None:
    settings = {
        "concurrency": 8,
        "api_key": "fal-secret-1",
        "queue": {"url": "http://127.0.0.1:1", "FAL_KEY": "fal-secret-2", "token": "t"},
        "headers": [{"Authorization": "Key fal-secret-3"}],
        "key_template": "{key}-{index}.{ext}",
    }
    run_id = ledger.start_run(settings)
    ledger.finish_run(run_id, {"completed": 3, "failed": 1}, exit_code=1)
    run = ledger.run(run_id)
    assert run is not None
    assert "fal-secret" not in json.dumps(run)
    assert run["settings"]["concurrency"] == 8
    assert run["settings"]["key_template"] == "{key}-{index}.{ext}"
    assert run["settings"]["api_key"] == "<redacted>"
    assert (run["counts"], run["exit_code"]) == ({"completed": 3, "failed": 1}, 1)
    assert run["ended_at"] >= run["started_at"]
    assert ledger.start_run({}) == run_id + 1


# --- exports -------------------------------------------------------------------------------


def _populate(ledger: Ledger) -> None:
    ledger.plan(
        [
            PlanItem("a", {"prompt": 'zwei, "drei"\nvier', "image_urls": ["u"]}, "m.csv:2"),
            PlanItem("b", {"prompt": "bleu", "image_urls": ["u"]}, "m.csv:3"),
            PlanItem("c", {"image_urls": ["u"]}, "m.csv:4"),
        ]
    )
    ledger.mark_submitted("a", "req-a", None, None, None, possible_duplicate=True)
    ledger.mark_completed("a", [record(0, "a"), record(1, "a")], seed=7, timings={}, nsfw=[])
    ledger.mark_failed("b", "permanent", "422: bad | thing")


def test_export_writes_csv_and_jsonl_that_parse_back(ledger: Ledger) -> None:
    _populate(ledger)
    paths = ledger.export()
    assert paths.csv == ledger.output_dir / "results.csv"
    with paths.csv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["key"] for r in rows] == ["a", "b", "c"]
    a, b, c = rows
    assert a["prompt"] == 'zwei, "drei"\nvier'
    assert (a["state"], a["request_id"], a["seed"], a["attempts"]) == (
        "completed",
        "req-a",
        "7",
        "1",
    )
    assert a["paths"] == "images/a-0.png|images/a-1.png"
    assert a["sha256s"] == f"{0:064x}|{1:064x}"
    assert (a["widths"], a["heights"], a["possible_duplicate"]) == ("64|64", "48|48", "true")
    assert a["completed_at"].endswith("+00:00")
    assert (b["state"], b["error_kind"], b["error_message"]) == (
        "failed",
        "permanent",
        "422: bad | thing",
    )
    assert (b["paths"], b["possible_duplicate"], b["source"]) == ("", "false", "m.csv:3")
    assert (c["state"], c["prompt"], c["in_manifest"]) == ("pending", "", "true")

    lines = paths.jsonl.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["key"] for r in records] == ["a", "b", "c"]
    # The same columns in both files: none dropped from the CSV, none added to the JSONL.
    assert all(list(r) == list(FIELDS) for r in records)
    assert all(list(r) == list(FIELDS) for r in rows)
    assert records[0]["paths"] == ["images/a-0.png", "images/a-1.png"]
    assert records[0]["widths"] == [64, 64]
    assert records[0]["possible_duplicate"] is True
    assert records[0]["seed"] == 7
    assert records[1]["paths"] == [] and records[1]["error_message"] == "422: bad | thing"
    assert records[2]["prompt"] is None
    assert not list(ledger.output_dir.glob(".tmp-*"))


def test_export_failure_leaves_previous_files_and_no_temp(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    _populate(ledger)
    paths = ledger.export()
    before = (paths.csv.read_bytes(), paths.jsonl.read_bytes())
    ledger.plan([PlanItem("d", {"prompt": "new"}, "m.csv:5")])

    def broken(record: dict[str, Any]) -> dict[str, Any]:
        if record["key"] == "c":
            raise OSError("disk full")
        return dict(record)

    monkeypatch.setattr(export_mod, "_csv_row", broken)
    with pytest.raises(OSError, match="disk full"):
        ledger.export()
    assert (paths.csv.read_bytes(), paths.jsonl.read_bytes()) == before
    assert not list(ledger.output_dir.glob(".tmp-*"))


def test_export_to_another_folder_streams_many_items(ledger: Ledger, tmp_path: Path) -> None:
    ledger.plan(items(1200))
    paths = ledger.export(tmp_path / "elsewhere")
    with paths.csv.open(newline="", encoding="utf-8") as fh:
        assert sum(1 for _ in csv.DictReader(fh)) == 1200
    assert len(paths.jsonl.read_text(encoding="utf-8").splitlines()) == 1200
