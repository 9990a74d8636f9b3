"""Report, status and cost tests: whole runs against the simulator, and a headless Chromium.

`Chromium` opens a report with Debian's `chromium` (no network: file:// only, every background
service off) and returns the DOM after the page's script ran, or a screenshot. The page keeps
its view in the URL hash (``#filter=failed``), so a DOM dump shows a filtered view without
clicks. Without `chromium` on PATH the browser tests are skipped, unless
FIRERED_REQUIRE_CHROMIUM=1 (as `.ci/run` sets), which makes them fail instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from support import TEST_KEY, png_uri, write_csv

from batch.fal import Credentials
from batch.job import JobSpec
from batch.pipeline.policy import RetryPolicy
from batch.pipeline.run import run_job
from batch.pipeline.summary import RunSummary
from batch.sim import Simulator

FAST = RetryPolicy(attempts=3, backoff_min=0.001, backoff_max=0.01, retry_after_max=0.05)
BROKEN_IMAGE = "data:image/png;base64,AAAAAAAA"  # the simulator cannot load it: a 422
BROWSER_TIMEOUT = 40


def make_rows(ok: int = 5, broken: int = 2, flagged: int = 1) -> list[dict[str, Any]]:
    """Manifest rows: `ok` edits, `flagged` with an NSFW prompt, `broken` that fail (422)."""
    out: list[dict[str, Any]] = []
    for i in range(ok):
        color = (40 * i % 255, 120, 200 - 20 * i)
        out.append(
            {"id": f"ok{i}", "prompt": f"paint it {i}", "image_urls": [png_uri(48, 32, color)]}
        )
    for i in range(flagged):
        out.append(
            {"id": f"flag{i}", "prompt": "nsfw beach scene", "image_urls": [png_uri(40, 40)]}
        )
    for i in range(broken):
        out.append({"id": f"bad{i}", "prompt": "sharpen", "image_urls": [BROKEN_IMAGE]})
    return out


@pytest.fixture
def rows() -> Callable[..., list[dict[str, Any]]]:
    """`make_rows`, for tests."""
    return make_rows


class Runner:
    """A simulator in the test's loop, and runs of manifests in `tmp` against it."""

    def __init__(self, tmp: Path, sim: Simulator) -> None:
        self.tmp = tmp
        self.sim = sim
        self.out = tmp / "out"
        self.manifest = tmp / "m.csv"

    def write(self, manifest_rows: list[dict[str, Any]]) -> Path:
        write_csv(self.manifest, manifest_rows)
        return self.manifest

    def spec(self, **overrides: Any) -> JobSpec:
        settings: dict[str, Any] = {
            "queue": self.sim.url,
            "concurrency": 8,
            "rate": 1000,
            "output": self.out,
            "name": "shots",
        }
        settings.update(overrides)
        return JobSpec.for_manifest(self.manifest, **settings)

    async def run(self, spec: JobSpec | None = None, **kwargs: Any) -> RunSummary:
        kwargs.setdefault("policy", FAST)
        kwargs.setdefault("credentials", Credentials(TEST_KEY))
        return await run_job(spec or self.spec(), **kwargs)


@pytest.fixture
async def make_runner(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    async with AsyncExitStack() as stack:

        async def make(**config: Any) -> Runner:
            config.setdefault("latency", "fixed:0.01")
            config.setdefault("capacity", 8)
            sim = await stack.enter_async_context(Simulator(key=TEST_KEY, **config))
            return Runner(tmp_path, sim)

        yield make


# --- the browser ---------------------------------------------------------------------------


@dataclass
class Dom:
    """What the tests read from a dumped DOM: <body>'s attributes, texts by id, the cards."""

    body: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    cards: list[dict[str, str]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


class _DomParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.dom = Dom()
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.dom.body = values
        if tag == "article":
            self.dom.cards.append(values)
        if tag == "img":
            self.dom.images.append(values.get("src", ""))
            return  # a void element
        ident = values.get("id")
        self._open.append(ident)
        if ident:
            self.dom.texts[ident] = ""

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag != "img":
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.dom.texts[ident] += data


def parse_dom(text: str) -> Dom:
    parser = _DomParser()
    parser.feed(text)
    return parser.dom


class Chromium:
    """Debian's `chromium`, headless, offline: DOM dumps and screenshots of local files."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.binary = binary
        self.profile = profile

    def _command(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            "--virtual-time-budget=10000",  # let the page's script and image loads settle
            *extra,
        ]

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            self._command(*args),
            capture_output=True,
            text=True,
            timeout=BROWSER_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    async def dom(self, page: Path, fragment: str = "", *, also: HTMLParser | None = None) -> Dom:
        """The DOM after the page's script ran; `also`: another parser fed the same dump."""
        url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
        text = await asyncio.to_thread(self._run, "--dump-dom", url)
        if also is not None:
            also.feed(text)
        return parse_dom(text)

    async def screenshot(self, page: Path, dest: Path, size: str = "1400,1000") -> Path:
        url = page.resolve().as_uri()
        await asyncio.to_thread(self._run, f"--screenshot={dest}", f"--window-size={size}", url)
        return dest


@pytest.fixture
def chromium(tmp_path: Path) -> Chromium:
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("FIRERED_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not installed (.ci/run installs it with apt-get)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return Chromium(binary, tmp_path / "chromium-profile")
