"""A ledger gone, emptied, damaged or read-only beside an earlier run's outputs: each refused
with one line that says what to do, exit 2, nothing sent and nothing overwritten."""

from __future__ import annotations

import json
import os

import pytest

from batch.errors import ExitCode


def test_a_deleted_ledger_beside_outputs_is_refused_and_nothing_is_sent(host) -> None:
    host.first_run()
    (host.out / "ledger.sqlite").unlink()
    before, sent = host.snapshot(), host.sim.sent()

    result = host.cli("run")

    assert result.exit_code == ExitCode.INVALID == 2
    line = host.one_line(result)
    assert line.startswith(f"{host.out}: this output folder holds an earlier run's outputs")
    assert "images/ (3 files)" in line and "results.csv" in line and "report.html" in line
    assert "its ledger ledger.sqlite is missing" in line
    assert "run the same `firered-batch run` command with --start-over" in line
    assert host.snapshot() == before and host.sim.sent() == sent
    assert not (host.out / "ledger.sqlite").exists()  # no new, empty ledger either
    dry = host.cli("run", "--dry-run")
    assert dry.exit_code == 2 and not (host.out / "ledger.sqlite").exists()
    status = host.cli("status", str(host.out))
    assert status.exit_code == 2 and "is missing" in host.one_line(status)


def test_a_zero_length_ledger_is_no_ledger(host) -> None:
    host.first_run()
    (host.out / "ledger.sqlite").write_bytes(b"")
    before, sent = host.snapshot(), host.sim.sent()

    result = host.cli("run")

    assert result.exit_code == 2
    assert "its ledger ledger.sqlite is empty (0 bytes)" in host.one_line(result)
    assert host.snapshot() == before and host.sim.sent() == sent
    doctor = host.cli("doctor", str(host.out))
    assert doctor.exit_code == 2 and "empty (0 bytes)" in doctor.stdout


def test_a_deleted_ledger_with_its_journal_left_is_refused(host) -> None:
    host.first_run()
    (host.out / "ledger.sqlite-wal").write_bytes(b"\0" * 32)
    (host.out / "ledger.sqlite").unlink()
    result = host.cli("run")
    assert result.exit_code == 2 and "ledger.sqlite-wal" in host.one_line(result)


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_a_damaged_ledger_is_a_clear_message_with_a_way_out(host, damage: str) -> None:
    host.first_run()
    path = host.out / "ledger.sqlite"
    data = path.read_bytes()
    path.write_bytes(os.urandom(len(data)) if damage == "random bytes" else data[: len(data) // 3])
    before, sent = host.snapshot(), host.sim.sent()

    result = host.cli("run")

    assert result.exit_code == 2
    line = host.one_line(result)
    assert line.startswith(f"{path}: the ledger is damaged (")
    assert f"`firered-batch doctor {host.out} --recover`" in line and ".recover`" in line
    assert "--start-over" in line
    assert host.snapshot() == before and host.sim.sent() == sent
    doctor = host.cli("doctor", str(host.out))
    assert doctor.exit_code == 2 and "PROBLEM" in doctor.stdout and ".recover" in doctor.stdout
    assert "Traceback" not in doctor.output
    assert host.snapshot() == before  # the doctor wrote nothing


def test_a_read_only_ledger_cannot_be_written_says_so(host) -> None:
    host.first_run()
    host.give_away(host.out)
    ledger = host.out / "ledger.sqlite"
    ledger.chmod(0o444)
    before, sent = host.snapshot(), host.sim.sent()

    with host.as_nobody():
        result = host.cli("run")

    assert result.exit_code == 2
    line = host.one_line(result)
    assert line.startswith(f"cannot write {ledger}: permission denied")
    assert host.snapshot() == before and host.sim.sent() == sent
    with host.as_nobody():
        doctor = host.cli("doctor", str(host.out))
    assert doctor.exit_code == 2
    assert f"PROBLEM  cannot write {ledger}: permission denied" in doctor.stdout
    assert "integrity_check: ok" in doctor.stdout  # read-only, it still checks the rest


def test_doctor_recover_brings_a_truncated_ledger_back_without_paying_twice(host) -> None:
    """The way out the message names: `doctor --recover` copies what is readable into a new
    ledger (the damaged file kept); items that lost their output records re-attach to their
    paid requests (`retry --kind download`); only items whose rows were lost are sent again."""
    host.add_rows(37)
    host.first_run()
    path = host.out / "ledger.sqlite"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4 + 100])
    sent = host.sim.sent()["accepted"]

    recovered = host.cli("doctor", str(host.out), "--recover")

    assert recovered.exit_code == 0, recovered.output
    assert recovered.stdout.startswith("recovered into a new ledger: ")
    assert recovered.stdout.strip().endswith("healthy")
    (kept,) = host.out.glob("damaged-*")
    assert (kept / "ledger.sqlite").read_bytes() == data[: len(data) * 3 // 4 + 100]
    status = host.cli("status", str(host.out), "--json")
    known = sum(json.loads(status.stdout)["counts"].values())
    assert 0 < known < 40
    assert host.cli("retry", str(host.out), "--kind", "download").exit_code == 0
    again = host.cli("run")
    assert again.exit_code == ExitCode.OK, again.output
    status = host.cli("status", str(host.out), "--json")
    assert json.loads(status.stdout)["counts"]["completed"] == 40
    assert host.sim.sent()["accepted"] - sent == 40 - known  # only the lost rows again
