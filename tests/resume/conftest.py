"""Resume tests: a real `firered-batch run` subprocess against a simulator in the test process.

The simulator lives in the test's event loop, so it outlives every runner process the tests
kill. `Harness` starts runs (optionally with a crashpoint armed), waits for observable progress
by polling the ledger or the simulator (never by fixed sleeps), and checks the invariants a
killed or interrupted run must leave behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import TEST_KEY, item_rows, write_csv

from batch.ledger import ItemRow, Ledger
from batch.outputs.durable import TEMP_PREFIX
from batch.outputs.naming import output_path, sha256_file
from batch.sim import Simulator

# Service latency that keeps several requests in flight at once (capacity 3 < concurrency 4).
LATENCY = "uniform:0.05,0.3"
RUN_TIMEOUT = 40.0
MAX_RESUMES = 5


@dataclass
class Result:
    code: int
    out: str
    err: str


class Harness:
    """One output folder, one manifest, one simulator; runs the CLI against them."""

    def __init__(self, tmp: Path, sim: Simulator, pycache: Path | None = None) -> None:
        self.tmp = tmp
        self.sim = sim
        self.pycache = pycache
        self.out = tmp / "out"
        self.manifest = tmp / "m.csv"
        self.target = self.manifest  # what `run` is given: the manifest, or a job file
        self.rows: list[dict[str, Any]] = []

    # --- the manifest ----------------------------------------------------------------------

    def write_manifest(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        write_csv(self.manifest, rows)

    def items(self, n: int) -> list[dict[str, Any]]:
        """Rows item000 … item{n-1}: a prompt and an inline image each."""
        return item_rows(n)

    @property
    def keys(self) -> list[str]:
        return [row["id"] for row in self.rows]

    # --- running the CLI -------------------------------------------------------------------

    def argv(self, *extra: str, command: str = "run") -> list[str]:
        args = [sys.executable, "-m", "batch", command, str(self.target)]
        if command == "run":
            args += ["--queue-url", self.sim.url, "--concurrency", "4", "--rate", "1000"]
            args += ["--history-wait", "2s"]  # a lost submit: looked for 2 s, not minutes
        return [*args, "--output", str(self.out), *extra]

    async def start(self, *extra: str, crash: str | None = None) -> asyncio.subprocess.Process:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("FAL_") and k != "FIRERED_BATCH_CRASH"
        }
        env["FAL_KEY"] = TEST_KEY
        if self.pycache is not None:
            # Every run is a fresh interpreter: let them share compiled modules (outside the
            # repository) instead of compiling the package again each time.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        if crash is not None:
            env["FIRERED_BATCH_CRASH"] = crash
        return await asyncio.create_subprocess_exec(
            *self.argv(*extra),
            env=env,
            cwd=self.tmp,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def finish(self, proc: asyncio.subprocess.Process) -> Result:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=RUN_TIMEOUT)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    async def run(self, *extra: str, crash: str | None = None) -> Result:
        return await self.finish(await self.start(*extra, crash=crash))

    async def resume_until_done(self, *extra: str) -> list[Result]:
        """The same command again, until it exits 0 (a bounded number of times)."""
        results: list[Result] = []
        for _ in range(MAX_RESUMES):
            result = await self.run(*extra)
            results.append(result)
            if result.code == 0:
                return results
            assert result.code == 4, (result.code, result.err)
        raise AssertionError(f"not done after {MAX_RESUMES} resumes: {results[-1]}")

    # --- observing -------------------------------------------------------------------------

    async def wait_until(
        self,
        condition: Callable[[], bool],
        proc: asyncio.subprocess.Process | None = None,
        timeout: float = 20.0,
    ) -> bool:
        """Poll until `condition()` holds; False if `proc` ended first."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not condition():
            if proc is not None and proc.returncode is not None:
                return False
            assert loop.time() < end, "timed out waiting for the run to make progress"
            await asyncio.sleep(0.02)
        return True

    def ledger(self) -> Ledger:
        return Ledger.open(self.out)

    def counts(self) -> dict[str, int]:
        """Items by state; all zero while the runner has not created its ledger yet."""
        if not (self.out / "ledger.sqlite").exists():
            return {"pending": 0, "submitted": 0, "completed": 0, "failed": 0}
        with self.ledger() as ledger:
            return ledger.counts()

    def row(self, key: str) -> ItemRow:
        with self.ledger() as ledger:
            row = ledger.get(key)
        assert row is not None, key
        return row

    def all_rows(self) -> list[ItemRow]:
        with self.ledger() as ledger:
            return [row for key in self.ledger_keys() if (row := ledger.get(key)) is not None]

    def _read_only(self) -> contextlib.closing[sqlite3.Connection]:
        uri = f"file:{self.out / 'ledger.sqlite'}?mode=ro"
        return contextlib.closing(sqlite3.connect(uri, uri=True))

    def ledger_keys(self) -> list[str]:
        with self._read_only() as conn:
            return [key for (key,) in conn.execute("SELECT key FROM items ORDER BY key")]

    def run_count(self) -> int:
        with self._read_only() as conn:
            return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])

    def submits(self, row: ItemRow) -> int:
        """Submits of this item's exact request the simulator accepted."""
        return self.sim.counters.submits_for(row.endpoint, row.payload)

    def sim_requests(self) -> int:
        return sum(self.sim.counters.requests.values())

    def temp_files(self) -> list[Path]:
        return sorted(p for p in self.out.rglob(f"{TEMP_PREFIX}*") if p.is_file())

    def image_files(self) -> list[Path]:
        images = self.out / "images"
        if not images.is_dir():
            return []
        return sorted(p for p in images.rglob("*") if p.is_file() and not _is_temp(p))

    # --- invariants ------------------------------------------------------------------------

    def check_consistent(self) -> None:
        """What any kill must leave: a sound database, states that agree with their facts,
        completed items whose files match their records, and no partial file under a final
        name (temporary files are allowed: the next run removes them)."""
        with self._read_only() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with self.ledger() as ledger:
            for row in self.all_rows():
                if row.state == "completed":
                    outputs = ledger.outputs(row.key)
                    assert outputs, f"{row.key}: completed without outputs"
                    for rec in outputs:
                        assert sha256_file(output_path(self.out, rec.path)) == (
                            rec.sha256,
                            rec.bytes,
                        ), f"{row.key}: {rec.path} differs from its ledger record"
                elif row.state == "submitted":
                    assert row.request_id, f"{row.key}: submitted without a request id"
                    assert not ledger.outputs(row.key)
                elif row.state == "pending":
                    assert row.request_id is None, f"{row.key}: pending with a request id"
                    assert not ledger.outputs(row.key)
        for path in self.image_files():
            with Image.open(path) as image:
                image.load()  # a truncated file under a final name would fail here

    def check_all_done(
        self,
        keys: Iterable[str] | None = None,
        *,
        extra_submits: int = 0,
        submits: Mapping[str, int] | None = None,
    ) -> list[ItemRow]:
        """Every item completed; no accepted request submitted again unless the item is flagged
        `possible_duplicate`; every file is the one the ledger describes; no temp file left.
        `extra_submits`: accepted submits of requests no item has any more (edited rows);
        `submits`: exact counts for items legitimately submitted again (after a failure)."""
        keys = list(self.keys if keys is None else keys)
        rows = [self.row(key) for key in keys]
        assert [r.key for r in rows if r.state != "completed"] == []
        recorded: set[Path] = set()
        with self.ledger() as ledger:
            for row in rows:
                n = self.submits(row)
                if submits is not None and row.key in submits:
                    assert n == submits[row.key], (row.key, n)
                elif row.possible_duplicate:
                    assert n >= 1, row.key
                else:
                    assert n == 1, f"{row.key} was submitted {n} times, not flagged"
                for rec in ledger.outputs(row.key):
                    path = output_path(self.out, rec.path)
                    assert sha256_file(path) == (rec.sha256, rec.bytes), rec.path
                    recorded.add(path)
        # Every accepted submit belongs to one of the items: the counts above are of the
        # exact payloads the runner sent.
        total = sum(self.submits(row) for row in rows) + extra_submits
        assert total == self.sim.counters.accepted_submits
        assert set(self.image_files()) == recorded
        assert self.temp_files() == []
        return rows


def _is_temp(path: Path) -> bool:
    return path.name.startswith(TEMP_PREFIX)


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture(scope="session")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pycache")


@pytest.fixture
async def make_harness(tmp_path: Path, pycache: Path) -> AsyncIterator[MakeHarness]:
    """make_harness(**sim_config) -> a Harness around a running simulator (closed after)."""
    async with AsyncExitStack() as stack:

        async def make(**config: Any) -> Harness:
            config.setdefault("latency", LATENCY)
            config.setdefault("capacity", 3)
            config.setdefault("seed", 11)
            sim = await stack.enter_async_context(Simulator(key=TEST_KEY, **config))
            return Harness(tmp_path, sim, pycache)

        yield make


@pytest.fixture
async def harness(make_harness: MakeHarness) -> Harness:
    """A simulator with service latency (capacity 3) and a harness around it."""
    return await make_harness()


@pytest.fixture
async def slow_harness(make_harness: MakeHarness) -> Harness:
    """Longer service times, for tests that must act while requests are surely in flight."""
    return await make_harness(latency="uniform:0.4,0.8")
