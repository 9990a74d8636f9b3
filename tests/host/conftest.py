"""A sick host for `firered-batch`: folders it may not write, ledgers gone or damaged, full disks.

`host` gives a folder every user may enter (so a test can run the command as another user), a
manifest in it, and `host.cli(...)`: the command line run in this process (click's CliRunner)
against a simulator serving from a thread of its own, whose counters say whether anything was
sent. Tests run as root (CI does): `host.as_nobody()` switches the effective user to `nobody`
for a block, so file modes bind as they would for an ordinary user; `disks.mount(path, size)`
mounts a tmpfs of that size (the test is skipped where mount is not allowed), unmounted when
the test ends however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from support import TEST_KEY, item_rows, write_csv

from batch.cli import main
from batch.sim import Simulator

NOBODY = 65534


class ThreadedSim:
    """The simulator on an event loop in a thread: the command's own `asyncio.run` can block
    this thread while the simulator answers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sim = Simulator(key=TEST_KEY, latency="fixed:0.005", capacity=8)
        self.thread = threading.Thread(target=self.loop.run_forever, name="sim", daemon=True)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self) -> None:
        self.thread.start()
        self._call(self.sim.__aenter__())

    def stop(self) -> None:
        try:
            self._call(self.sim.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()

    @property
    def url(self) -> str:
        return self.sim.url

    def sent(self) -> dict[str, Any]:
        """What reached the simulator so far (requests by route, accepted submits)."""
        counters = self.sim.counters
        return {"requests": dict(counters.requests), "accepted": counters.accepted_submits}


class Host:
    """A world-enterable folder with a manifest and an output folder `out` for it."""

    def __init__(self, base: Path, sim: ThreadedSim) -> None:
        self.base = base
        self.sim = sim
        self.manifest = base / "m.csv"
        self.out = base / "out"
        self.rows = 3
        write_csv(self.manifest, item_rows(self.rows))

    def add_rows(self, n: int) -> None:
        self.rows += n
        write_csv(self.manifest, item_rows(self.rows))

    def cli(self, command: str, *args: str, output: Path | None = None) -> Result:
        argv = [command, *args]
        if command == "run":
            argv = [command, str(self.manifest), "--queue-url", self.sim.url, *args]
            argv += ["--output", str(output or self.out)]
        return CliRunner().invoke(main, argv, env={"FAL_KEY": TEST_KEY})

    def first_run(self) -> Result:
        result = self.cli("run")
        assert result.exit_code == 0, result.output
        return result

    # the helpers below, as methods: tests reach them through the fixture
    as_nobody = staticmethod(lambda: as_nobody())
    give_away = staticmethod(lambda path: give_away(path))
    one_line = staticmethod(lambda result: one_line(result))

    def snapshot(self, folder: Path | None = None) -> dict[str, tuple[int, int, str]]:
        return snapshot(folder or self.out)


@pytest.fixture
def threaded_sim() -> Iterator[ThreadedSim]:
    sim = ThreadedSim()
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def host(threaded_sim: ThreadedSim) -> Iterator[Host]:
    base = Path(tempfile.mkdtemp(prefix="firered-host-"))
    base.chmod(0o755)  # `nobody` may enter it
    try:
        yield Host(base, threaded_sim)
    finally:
        for root, dirs, _files in os.walk(base):
            for name in dirs:
                with contextlib.suppress(OSError):
                    Path(root, name).chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Run the block as the user `nobody` (effective ids), when running as root; as the user
    it already is otherwise (file modes bind then as they are)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def give_away(path: Path) -> None:
    """Make `path` (and everything under it) belong to `nobody`, when running as root."""
    if os.geteuid() != 0:
        return
    for item in [path, *path.rglob("*")]:
        os.chown(item, NOBODY, NOBODY, follow_symlinks=False)


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `folder` (not the lock) by path: size, mtime, sha256."""
    files: dict[str, tuple[int, int, str]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != ".lock":
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files[path.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns, digest)
    return files


def one_line(result: Result) -> str:
    """The command's message: one line on stderr, no traceback anywhere."""
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


class Disks:
    """Small disks (tmpfs) mounted for one test; `cleanup` unmounts them."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def mount(self, path: Path, size: str) -> Path:
        """A tmpfs of `size` (e.g. "1m") at `path`; the test is skipped where mount fails."""
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        self.mounted.append(path)
        return path

    @staticmethod
    def resize(path: Path, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

    @staticmethod
    def fill(folder: Path) -> Path:
        """Fill the disk holding `folder` to the last byte with a file; return it."""
        filler = folder / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for chunk in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)
        return filler

    def cleanup(self) -> None:
        for path in reversed(self.mounted):
            done = subprocess.run(["umount", str(path)], capture_output=True, check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def disks(request: pytest.FixtureRequest) -> Disks:
    made = Disks()
    request.addfinalizer(made.cleanup)  # unmounted however the test ends
    return made
