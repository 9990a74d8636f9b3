"""Output files: safe names, paths inside the folder, temporary files, integrity checks."""

from __future__ import annotations

import datetime
import errno
import hashlib
import os
import unicodedata
from pathlib import Path

import pytest
from support import leftovers, png_bytes

import batch.outputs.aside as aside_module
from batch.errors import ExitCode
from batch.outputs import (
    DiskFullError,
    LedgerMissingError,
    NotWritableError,
    host_error,
    run_lock,
    set_aside,
)
from batch.outputs.durable import atomic_writer
from batch.outputs.naming import (
    OutputRecord,
    check_output_path,
    cleanup_temp_files,
    ext_for,
    output_path,
    safe_name,
    validate_template,
    verify_outputs,
)

PNG = png_bytes(64, 48)


# --- temp files and verification -----------------------------------------------------------


def test_cleanup_temp_files_removes_only_leftovers(tmp_path: Path) -> None:
    images = tmp_path / "images" / "sub"
    images.mkdir(parents=True)
    (images / ".tmp-abc-k-0.png").write_bytes(b"x")
    (tmp_path / "images" / ".tmp-def-k-1.png").write_bytes(b"x")
    (tmp_path / ".tmp-123-results.csv").write_text("x")
    (tmp_path / "images" / "k-0.png").write_bytes(b"keep")
    (tmp_path / "images" / "tmp-not-a-temp.png").write_bytes(b"keep")
    assert cleanup_temp_files(tmp_path) == 3
    assert leftovers(tmp_path) == []
    assert (tmp_path / "images" / "k-0.png").exists()
    assert (tmp_path / "images" / "tmp-not-a-temp.png").exists()
    assert cleanup_temp_files(tmp_path) == 0
    assert cleanup_temp_files(tmp_path / "does-not-exist") == 0


def test_verify_outputs_reports_changed_missing_and_unsafe_files(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    good, bad = tmp_path / "images" / "a.png", tmp_path / "images" / "b.png"
    good.write_bytes(PNG)
    bad.write_bytes(PNG)
    digest = hashlib.sha256(PNG).hexdigest()

    def rec(path: str, size: int = len(PNG)) -> OutputRecord:
        return OutputRecord(0, path, "u", size, digest, 64, 48, "image/png")

    bad.write_bytes(PNG[:-1] + b"\x00")
    problems = verify_outputs(
        tmp_path,
        [rec("images/a.png"), rec("images/b.png"), rec("images/c.png"), rec("../a.png"),
         rec("images/a.png", size=1)],
    )  # fmt: skip
    assert [(p.path, p.kind) for p in problems] == [
        ("images/b.png", "sha256"),
        ("images/c.png", "missing"),
        ("../a.png", "unsafe_path"),
        ("images/a.png", "size"),
    ]


# --- names ---------------------------------------------------------------------------------

TEMPLATE = "{key}-{index}.{ext}"


def assert_safe(name: str) -> None:
    assert "/" not in name and "\\" not in name
    assert ".." not in name
    assert not name.startswith(".")
    assert all(unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp") for ch in name)
    assert 0 < len(name.encode()) <= 200


@pytest.mark.parametrize(
    "key",
    ["../../etc/passwd", "a/b", "a\\b", "nul\x00byte", "tab\tand\nnewline", ".hidden", "..", ".",
     "...", " ", "C:\\Windows", "evil\u202egnp.exe", "line\u2028sep", "x" * 1000, "é" * 300],
)  # fmt: skip
def test_safe_name_neutralises_hostile_keys(key: str) -> None:
    name = safe_name(TEMPLATE, key=key, index=0, ext="png")
    assert_safe(name)
    assert name.endswith(".png")


def test_safe_name_keeps_ordinary_names_and_unicode_as_they_are() -> None:
    assert safe_name(TEMPLATE, key="product-123", index=2, ext="jpg") == "product-123-2.jpg"
    assert safe_name(TEMPLATE, key="café ☕", index=0, ext="png") == "café ☕-0.png"
    assert safe_name("{key}_{index:03d}_{seed}.{ext}", key="a", index=7, seed=42, ext="png") == (
        "a_007_42.png"
    )


def test_safe_name_normalises_to_nfc() -> None:
    name = safe_name(TEMPLATE, key="cafe\u0301", index=0, ext="png")
    assert name.startswith("café")
    assert "e\u0301" not in name


def test_safe_name_keeps_distinct_inputs_distinct() -> None:
    names = {
        safe_name(TEMPLATE, key=key, index=index, ext="png")
        for key in ("a/b", "a_b", "a\\b", "a:b", "x" * 500 + "1", "x" * 500 + "2")
        for index in (0, 1)
    }
    assert len(names) == 12


def test_safe_name_shortens_long_names_but_keeps_the_extension() -> None:
    name = safe_name(TEMPLATE, key="ü" * 400, index=3, ext="webp", max_bytes=100)
    assert len(name.encode()) <= 100
    assert name.endswith(".webp")
    name.encode().decode()  # still valid UTF-8, no cut character


def test_safe_name_rejects_unknown_fields_clearly() -> None:
    with pytest.raises(ValueError, match=r"unknown field 'colour'.*available: ext, index, key"):
        safe_name("{key}-{colour}-{index}.{ext}", key="a", index=0, ext="png")
    with pytest.raises(ValueError, match="plain name"):
        safe_name("{key.__class__}-{index}", key="a", index=0)
    with pytest.raises(ValueError, match="plain name"):
        safe_name("{key[0]}-{index}", key="a", index=0)
    with pytest.raises(ValueError, match="must contain"):
        safe_name("{key}.{ext}", key="a", ext="png")
    with pytest.raises(ValueError, match="bad file-name template"):
        safe_name("{key", key="a", index=0)


def test_validate_template_checks_fields_before_a_run() -> None:
    validate_template("{key}-{index}-{seed}.{ext}")
    with pytest.raises(ValueError, match=r"unknown field \{prompt\}"):
        validate_template("{prompt}-{index}.{ext}")
    with pytest.raises(ValueError, match="must contain"):
        validate_template("{key}.{ext}")
    with pytest.raises(ValueError, match="inside the output folder"):
        validate_template("../{key}-{index}.{ext}")


def test_ext_for_content_types_and_urls() -> None:
    assert ext_for("image/png") == "png"
    assert ext_for("image/jpeg; charset=binary") == "jpg"
    assert ext_for(None, "https://cdn/x/y.JPEG?sig=1") == "jpg"
    assert ext_for("application/octet-stream", "https://cdn/x/y") == "bin"


@pytest.mark.parametrize(
    "rel",
    ["", "/etc/passwd", "..", "../a.png", "images/../../a.png", "a\\..\\b.png", "nul\x00.png"],
)
def test_output_paths_that_could_leave_the_folder_are_refused(rel: str) -> None:
    with pytest.raises(ValueError, match="unsafe output path"):
        check_output_path(rel)
    with pytest.raises(ValueError, match="unsafe output path"):
        output_path(Path("/out"), rel)


@pytest.mark.parametrize("rel", ["images/a.png", "a..b.png", ".hidden.png", "images/./a_0.png"])
def test_output_paths_inside_the_folder_are_kept_as_they_are(rel: str) -> None:
    check_output_path(rel)
    assert output_path(Path("/out"), rel) == Path("/out") / rel


# --- host faults, a ledger gone, a fresh start ---------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind", "text"),
    [
        (errno.ENOSPC, DiskFullError, "disk full (no space left on device)"),
        (errno.EDQUOT, DiskFullError, "disk full (disk quota exceeded)"),
        (errno.EACCES, NotWritableError, "cannot write {p}: permission denied"),
        (errno.EROFS, NotWritableError, "cannot write {p}: read-only file system"),
    ],
)
def test_host_errors_name_the_folder_and_what_to_do(
    tmp_path: Path, code: int, kind: type, text: str
) -> None:
    err = host_error(OSError(code, os.strerror(code), "/elsewhere/.tmp-x"), tmp_path)
    assert isinstance(err, kind) and text.format(p=tmp_path) in str(err)
    assert "\n" not in str(err) and "/elsewhere" not in str(err)
    assert host_error(OSError(errno.EIO, "Input/output error"), tmp_path) is None


def test_atomic_writer_on_a_full_disk_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "results.csv"
    dest.write_text("old\n")
    with pytest.raises(DiskFullError) as caught, atomic_writer(dest) as fh:
        fh.write("new, half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.exit_code == ExitCode.STOPPED and caught.value.path == tmp_path
    assert dest.read_text() == "old\n" and leftovers(tmp_path) == []


def _earlier_run(out: Path) -> None:
    (out / "images").mkdir(parents=True)
    (out / "images" / "a_0.png").write_bytes(PNG)
    (out / "results.csv").write_text("key\na\n")
    (out / "ledger.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    (out / "ledger.sqlite-wal").write_bytes(b"wal")


def test_run_lock_refuses_a_folder_whose_ledger_is_gone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _earlier_run(out)
    (out / "ledger.sqlite").unlink()
    with pytest.raises(LedgerMissingError) as caught, run_lock(out):
        pytest.fail("the run must not start")
    assert caught.value.found == ("images/ (1 file)", "results.csv", "ledger.sqlite-wal")
    with run_lock(out, check_ledger=False):  # --start-over takes the lock without the check
        pass
    with run_lock(tmp_path / "new"):  # a new folder is fine
        pass


def test_set_aside_moves_everything_but_the_lock_and_deletes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _earlier_run(out)
    (out / ".lock").write_text("1\n")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    now = datetime.datetime(2026, 5, 7, 10, 15, 0, tzinfo=datetime.UTC)

    moved = set_aside(out, now=now)

    assert moved == tmp_path / "out.set-aside-20260507T101500Z"
    assert [p.name for p in out.iterdir()] == [".lock"]
    after = {p.relative_to(moved): p.read_bytes() for p in moved.rglob("*") if p.is_file()}
    assert after == {k: v for k, v in before.items() if k.name != ".lock"}
    _earlier_run(out)
    assert set_aside(out, now=now) == tmp_path / "out.set-aside-20260507T101500Z-2"
    assert set_aside(out, now=now) is None  # nothing left to move
    assert set_aside(tmp_path / "missing") is None


def test_set_aside_moves_inside_when_beside_is_another_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    _earlier_run(out)
    real = os.rename
    moves: list[str] = []

    def rename(src: Path, dst: Path) -> None:
        if not Path(dst).is_relative_to(out):  # out is a mount point: beside it is elsewhere
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        moves.append(Path(src).name)
        real(src, dst)

    monkeypatch.setattr(aside_module.os, "rename", rename)
    now = datetime.datetime(2026, 5, 7, 10, 15, 0, tzinfo=datetime.UTC)

    moved = set_aside(out, now=now)

    assert moved == out / "set-aside-20260507T101500Z"
    assert sorted(p.name for p in out.iterdir()) == ["set-aside-20260507T101500Z"]
    assert moves[:2] == ["ledger.sqlite", "ledger.sqlite-wal"]  # the ledger first
    assert not (tmp_path / "out.set-aside-20260507T101500Z").exists()
