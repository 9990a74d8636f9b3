"""A ledger that is missing, damaged or unwritable, spreadsheet-safe exports, and `doctor`."""

from __future__ import annotations

import csv
import datetime
import errno
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import PlanItem, png_bytes

from batch.errors import ExitCode
from batch.ledger import (
    LedgerDamagedError,
    LedgerMissingError,
    check_ledger_present,
    sqlite_fault,
)
from batch.ledger.doctor import diagnose
from batch.ledger.export import neutralise
from batch.ledger.migrations import MIGRATIONS
from batch.ledger.salvage import salvage
from batch.ledger.store import Ledger
from batch.outputs import DiskFullError, NotWritableError
from batch.outputs.naming import OutputRecord

PNG = png_bytes(20, 10)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "out") as led:
        yield led


def _complete(led: Ledger, key: str, data: bytes = PNG) -> Path:
    """An item completed with one output file written where the ledger says."""
    led.plan([PlanItem(key, {"prompt": key})])
    led.mark_submitted(key, f"r-{key}", None, None, None)
    rel = f"images/{key}_0.png"
    path = led.output_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    out = OutputRecord(0, rel, "u", len(data), digest, 20, 10, "image/png")
    led.mark_completed(key, [out], seed=1, timings=None, nsfw=None)
    return path


# --- results.csv is safe to open in a spreadsheet --------------------------------------------


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+2", "'+1+2"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("plain = text", "plain = text"),
        ("", ""),
    ],
)
def test_neutralise_prefixes_cells_a_spreadsheet_would_run(cell: str, shown: str) -> None:
    assert neutralise(cell) == shown


def test_csv_cells_starting_like_formulas_are_quoted_and_jsonl_stays_exact(
    ledger: Ledger,
) -> None:
    hostile = '=cmd|" /C calc"!A0'
    ledger.plan([PlanItem("=evil", {"prompt": hostile}, "@m.csv:2"), PlanItem("ok", {"p": 1})])
    ledger.mark_submitted("=evil", "-r1", None, None, None)
    ledger.mark_failed("=evil", "+kind", "-1 is not allowed", error_type="@type")
    with ledger._tx() as conn:  # a seed a model could return: a number, not a formula
        conn.execute("UPDATE items SET seed = -5 WHERE key = 'ok'")

    paths = ledger.export()

    with paths.csv.open(newline="", encoding="utf-8") as fh:
        rows = {row["source"]: row for row in csv.DictReader(fh)}
    evil, ok = rows["'@m.csv:2"], rows["m.csv:2"]
    assert evil["key"] == "'=evil" and evil["prompt"] == "'" + hostile
    assert (evil["request_id"], evil["error_kind"]) == ("'-r1", "'+kind")
    assert (evil["error_message"], evil["error_type"]) == ("'-1 is not allowed", "'@type")
    assert ok["seed"] == "-5" and ok["key"] == "ok"
    records = {r["key"]: r for r in map(json.loads, paths.jsonl.read_text().splitlines())}
    assert records["=evil"]["prompt"] == hostile and records["=evil"]["source"] == "@m.csv:2"
    assert records["=evil"]["error_message"] == "-1 is not allowed"
    assert records["ok"]["seed"] == -5


# --- missing, damaged and unwritable ledgers -----------------------------------------------


def test_a_folder_with_outputs_but_no_ledger_is_refused_naming_what_is_there(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "a_0.png").write_bytes(PNG)
    (out / "results.csv").write_text("key\n")

    with pytest.raises(LedgerMissingError) as caught:
        check_ledger_present(out)

    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.INVALID
    assert "images/ (1 file)" in message and "results.csv" in message
    assert "ledger.sqlite is missing" in message and "--start-over" in message
    assert "\n" not in message
    (out / "ledger.sqlite").touch()  # a zero-length ledger is no ledger either
    with pytest.raises(LedgerMissingError, match=r"empty \(0 bytes\)"):
        check_ledger_present(out)


@pytest.mark.parametrize("leftover", ["ledger.sqlite-wal", "report.html", "results.jsonl"])
def test_any_trace_of_an_earlier_run_counts(tmp_path: Path, leftover: str) -> None:
    (tmp_path / leftover).write_bytes(b"x")
    with pytest.raises(LedgerMissingError, match=leftover):
        check_ledger_present(tmp_path)


def test_a_new_folder_is_fine_and_open_without_create_wants_a_ledger(tmp_path: Path) -> None:
    check_ledger_present(tmp_path / "new")  # nothing there: a first run
    (tmp_path / "empty").mkdir()
    check_ledger_present(tmp_path / "empty")
    with pytest.raises(LedgerMissingError, match="no ledger yet"):
        Ledger.open(tmp_path / "new", create=False)
    assert not (tmp_path / "new").exists()  # refused before anything was made
    (tmp_path / "empty" / "ledger.sqlite").touch()
    with pytest.raises(LedgerMissingError, match="no ledger yet"):
        Ledger.open(tmp_path / "empty", create=False)
    assert (tmp_path / "empty" / "ledger.sqlite").stat().st_size == 0  # not initialised


@pytest.mark.parametrize("damage", ["random", "truncated", "text"])
def test_a_damaged_ledger_is_a_clear_error_not_a_traceback(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "out"
    with Ledger.open(out) as led:
        led.plan([PlanItem(f"k{i:04d}", {"prompt": "x" * 300, "i": i}) for i in range(300)])
    path = out / "ledger.sqlite"
    data = path.read_bytes()
    broken = {
        "random": os.urandom(len(data)),
        "truncated": data[: len(data) // 2],
        "text": b"this is not a database\n" * 50,
    }[damage]
    path.write_bytes(broken)

    with pytest.raises(LedgerDamagedError) as caught:
        Ledger.open(out)

    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.INVALID and "\n" not in message
    assert "the ledger is damaged" in message and f"firered-batch doctor {out}" in message
    assert ".recover" in message
    assert path.read_bytes() == broken  # left as it was, for recovery


def test_sqlite_errors_of_the_host_become_errors_a_user_can_act_on(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    full = sqlite_fault(sqlite3.OperationalError("database or disk is full"), path)
    assert isinstance(full, DiskFullError) and full.exit_code == ExitCode.STOPPED
    assert str(tmp_path) in str(full) and "free some space" in str(full)
    bad = sqlite_fault(sqlite3.DatabaseError("file is not a database"), path)
    assert isinstance(bad, LedgerDamagedError)
    gone = sqlite_fault(sqlite3.OperationalError("attempt to write a readonly database"), path)
    assert isinstance(gone, NotWritableError) and gone.exit_code == ExitCode.INVALID
    assert sqlite_fault(sqlite3.OperationalError("no such table: x"), path) is None


def test_a_full_disk_inside_a_transaction_is_disk_full(ledger: Ledger) -> None:
    ledger.plan([PlanItem("a", {"p": 1})])

    class Full:  # a connection whose write meets a full disk
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn
            self.in_transaction = False

        def execute(self, sql: str, *args: object) -> object:
            if sql.startswith("UPDATE"):
                raise sqlite3.OperationalError("database or disk is full")
            result = self.conn.execute(sql, *args)
            self.in_transaction = self.conn.in_transaction
            return result

    real = ledger._conn
    ledger._conn = Full(real)  # type: ignore[assignment]
    try:
        with pytest.raises(DiskFullError, match="disk full"):
            ledger.mark_submitted("a", "r", None, None, None)
    finally:
        ledger._conn = real
    assert not real.in_transaction and ledger.counts()["pending"] == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files (see tests/host)")
def test_a_read_only_ledger_is_refused_as_not_writable(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as led:
        led.plan([PlanItem("a", {"p": 1})])
    (tmp_path / "ledger.sqlite").chmod(0o444)
    with pytest.raises(NotWritableError, match=r"cannot write .*ledger.sqlite: permission denied"):
        Ledger.open(tmp_path)


def test_last_run_tells_an_output_folder_its_job(ledger: Ledger) -> None:
    assert ledger.last_run() is None
    ledger.start_run({"name": "first"})
    run_id = ledger.start_run({"name": "demo", "endpoint": "fal-ai/x", "api_key": "secret"})
    last = ledger.last_run()
    assert last is not None and last["id"] == run_id
    assert last["settings"] == {"name": "demo", "endpoint": "fal-ai/x", "api_key": "<redacted>"}


# --- doctor --------------------------------------------------------------------------------


def _problems(out: Path) -> list[str]:
    return [f.what for f in diagnose(out).findings if not f.ok]


def test_doctor_finds_a_healthy_folder_healthy(ledger: Ledger) -> None:
    _complete(ledger, "a")
    _complete(ledger, "b")
    result = diagnose(ledger.output_dir)
    assert result.healthy, result.text()
    text = result.text()
    assert "integrity_check: ok" in text and "all 2 files match" in text
    assert "items: 2 completed" in text and text.endswith("healthy")


def test_doctor_lists_missing_and_changed_output_files(ledger: Ledger) -> None:
    _complete(ledger, "a").unlink()
    _complete(ledger, "b").write_bytes(PNG[:-1] + b"\x01")
    _complete(ledger, "c")
    (ledger.output_dir / "images" / "stray.png").write_bytes(PNG)
    (ledger.output_dir / "images" / ".tmp-x-c_0.png").write_bytes(b"x")

    result = diagnose(ledger.output_dir)

    assert not result.healthy
    (problem,) = [f for f in result.findings if not f.ok]
    assert "2 of 3 files do not match" in problem.what
    assert "missing: 1 (images/a_0.png)" in problem.what
    assert "sha256: 1 (images/b_0.png)" in problem.what
    assert "--start-over" in problem.todo
    assert any("1 files in images/ that the ledger does not record" in n for n in result.notes)
    assert any("1 temporary files" in n for n in result.notes)


def test_doctor_checks_the_migrations(ledger: Ledger) -> None:
    with ledger._tx() as conn:
        conn.execute("INSERT INTO migrations (name, applied_at) VALUES ('m999_future', 0)")
    assert any("m999_future not known" in p for p in _problems(ledger.output_dir))
    with ledger._tx() as conn:
        conn.execute("DELETE FROM migrations WHERE name IN ('m999_future', 'm006_fal_details')")
    result = diagnose(ledger.output_dir)
    assert result.healthy and "the next run applies ['m006_fal_details']" in result.text()


def test_doctor_says_how_to_recover_a_damaged_ledger(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite").write_bytes(os.urandom(8192))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = diagnose(tmp_path)
    assert not result.healthy
    (problem,) = [f for f in result.findings if not f.ok]
    assert "file is not a database" in problem.what
    assert ".recover" in problem.todo and "--start-over" in problem.todo
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no -wal or -shm made


def test_doctor_reports_a_missing_ledger(tmp_path: Path) -> None:
    assert _problems(tmp_path / "none") == [
        f"{tmp_path / 'none'}: no ledger yet (has this job been run?)"
    ]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(PNG)
    (problem,) = _problems(tmp_path)
    assert "ledger.sqlite is missing" in problem


def test_doctor_reads_a_ledger_it_may_not_write(ledger: Ledger, monkeypatch) -> None:
    _complete(ledger, "a")
    ledger.close()
    import batch.ledger.faults as ledger_faults

    def read_only(path: Path) -> str | None:  # as a read-only mount answers for every file
        return "read-only file system"

    monkeypatch.setattr(ledger_faults, "writable", read_only)
    result = diagnose(ledger.output_dir)
    (problem,) = [f for f in result.findings if not f.ok]
    assert problem.what == f"cannot write {ledger.path}: read-only file system"
    assert "integrity_check: ok" in result.text()  # the rest is still checked


def test_errno_of_a_quota_is_a_full_disk(tmp_path: Path) -> None:
    from batch.outputs import host_error

    err = host_error(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    assert isinstance(err, DiskFullError) and "disk quota exceeded" in str(err)


# --- doctor --recover: what a damaged ledger still holds, in a new one ---------------------


def _finished_ledger(out: Path, n: int = 200) -> None:
    with Ledger.open(out) as led:
        led.start_run({"name": "demo"})
        for i in range(n):
            _complete(led, f"k{i:04d}")


def test_salvage_leaves_a_sound_ledger_alone(tmp_path: Path) -> None:
    _finished_ledger(tmp_path, 3)
    before = (tmp_path / "ledger.sqlite").read_bytes()
    assert salvage(tmp_path) is None
    assert (tmp_path / "ledger.sqlite").read_bytes() == before
    assert not list(tmp_path.glob("damaged-*"))


def test_salvage_copies_what_a_truncated_ledger_still_holds(tmp_path: Path) -> None:
    _finished_ledger(tmp_path)
    path = tmp_path / "ledger.sqlite"
    data = path.read_bytes()
    damaged = data[: len(data) * 3 // 4 + 100]  # cut mid-page, as a full disk would
    path.write_bytes(damaged)
    now = datetime.datetime(2026, 5, 7, 10, 15, tzinfo=datetime.UTC)

    result = salvage(tmp_path, now=now)

    assert result is not None
    kept = tmp_path / "damaged-20260507T101500Z"
    assert result.kept == kept and (kept / "ledger.sqlite").read_bytes() == damaged
    assert 0 < result.copied["items"] < 200 and result.copied["runs"] == 1
    with Ledger.open(tmp_path, create=False) as led:  # a sound ledger again
        counts = led.counts()
        assert counts["completed"] + counts["failed"] == result.copied["items"]
        assert led.applied_migrations() == [name for name, _ in MIGRATIONS]
        for key in (r[0] for r in led._conn.execute("SELECT key FROM items")):
            item = led.get(key)
            assert item is not None
            if item.state == "failed":  # its output records were lost: re-attach, not resend
                assert (item.error_kind, item.request_id) == ("download", f"r-{key}")
            else:
                assert [o.path for o in led.outputs(key)] == [f"images/{key}_0.png"]
    assert diagnose(tmp_path).healthy
    assert "a run sends them again" in result.text() and str(kept) in result.text()


def test_salvage_of_a_file_with_nothing_readable_changes_nothing(tmp_path: Path) -> None:
    _finished_ledger(tmp_path, 3)
    garbage = os.urandom(16384)
    (tmp_path / "ledger.sqlite").write_bytes(garbage)
    with pytest.raises(LedgerDamagedError, match="not one item could be read"):
        salvage(tmp_path)
    assert (tmp_path / "ledger.sqlite").read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "ledger.sqlite"]
