"""An output folder, or the folder it is to be made in, that this user may not write: one
line naming it, exit 2, nothing sent, nothing changed."""

from __future__ import annotations

from batch.errors import ExitCode


def test_a_read_only_output_folder_is_refused(host) -> None:
    host.first_run()
    host.give_away(host.out)
    host.out.chmod(0o555)
    before, sent = host.snapshot(), host.sim.sent()

    with host.as_nobody():
        result = host.cli("run")

    assert result.exit_code == ExitCode.INVALID
    assert host.one_line(result).startswith(f"cannot write {host.out}: permission denied")
    assert host.snapshot() == before and host.sim.sent() == sent


def test_an_output_folder_owned_by_someone_else_is_refused(host) -> None:
    host.first_run()  # the folder and its lock belong to root; the run is `nobody`'s
    before, sent = host.snapshot(), host.sim.sent()

    with host.as_nobody():
        result = host.cli("run")

    assert result.exit_code == ExitCode.INVALID
    line = host.one_line(result)
    assert line.startswith(f"cannot write {host.out}") and ": permission denied" in line
    assert host.snapshot() == before and host.sim.sent() == sent


def test_an_output_folder_that_cannot_be_made_is_refused(host) -> None:
    parent = host.base / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    out = parent / "out"
    sent = host.sim.sent()

    with host.as_nobody():
        result = host.cli("run", output=out)

    assert result.exit_code == ExitCode.INVALID
    assert host.one_line(result).startswith(f"cannot create {out}: permission denied")
    assert not out.exists() and host.sim.sent() == sent
    with host.as_nobody():
        export = host.cli("export", str(host.manifest), "--output", str(out))
    assert export.exit_code == 2 and "no ledger yet" in host.one_line(export)
