"""Hostile input: every case is a small file written by its test, run through `firered-batch
validate` and `firered-batch run --queue-url local`; both must exit 2 with a
``file:line: field: reason`` line naming the problem, no traceback, and nothing sent."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batch.cli import main
from batch.sim.server import Simulator

Check = Callable[..., None]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory, with a home folder of its own (``~`` in job files)."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def sim_starts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every start of the embedded simulator (none may happen: nothing may be sent)."""
    starts: list[Any] = []
    enter = Simulator.__aenter__

    async def counting(self: Simulator) -> Simulator:
        starts.append(self)
        return await enter(self)

    monkeypatch.setattr(Simulator, "__aenter__", counting)
    return starts


@pytest.fixture
def sent() -> Callable[[Path], int]:
    """sent(root): the items any ledger below ``root`` has submitted or completed."""
    return _sent


def _sent(root: Path) -> int:
    total = 0
    for ledger in root.rglob("ledger.sqlite"):
        with sqlite3.connect(ledger) as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM items WHERE state IN ('submitted', 'completed')"
            ).fetchone()
        total += count
    return total


@pytest.fixture
def check(project: Path, sim_starts: list[Any]) -> Check:
    """check(target, line) runs both commands on ``target``: exit 2, a stderr line that
    matches ``line`` (a regular expression, anchored at the start of the line), no traceback,
    nothing sent. Returns nothing; the messages are in the assertion when it fails."""

    def run(target: str | Path, line: str, *extra: str) -> None:
        pattern = re.compile(line)
        for command in (["validate", str(target)], ["run", str(target), "--queue-url", "local"]):
            result = CliRunner().invoke(main, [*command, *extra], env={"FAL_KEY": "unused"})
            shown = f"{' '.join(command)}: exit {result.exit_code}\n{result.output}"
            assert result.exit_code == 2, shown
            assert "Traceback" not in result.output and "crashed" not in result.output, shown
            lines = result.stderr.splitlines()
            assert any(pattern.match(text) for text in lines), shown
            assert re.match(r"[^\s:][^:]*(:\d+)?: ", lines[0]), shown  # file[:line]: ...
        assert not sim_starts, "the simulator was started"
        assert _sent(project) == 0, "an item was submitted"

    return run
