"""Review tests: ledgers with outputs, the demo job run against the simulator, and a headless
Chromium driven over the DevTools protocol (keys, clicks, DOM state, screenshots).

`browser` starts Debian's `chromium` with ``--remote-debugging-port=0``, reads the DevTools URL
it prints, and talks to it over aiohttp's websocket client (no extra package). `Tab.until(js)`
waits for a DOM state: a promise in the page that resolves once the expression is truthy (the
test never sleeps). Without `chromium` on PATH the browser tests are skipped, unless
FIRERED_REQUIRE_CHROMIUM=1, which makes them fail instead (as in tests/report).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from support import PlanItem, Runner

from batch.ledger import Ledger
from batch.outputs.naming import OutputRecord

REPO = Path(__file__).resolve().parents[2]
BROWSER_TIMEOUT = 30.0
KEYS = {  # key → (code, virtual key code, text, modifiers)
    "Enter": ("Enter", 13, "\r", 0),
    "Escape": ("Escape", 27, "", 0),
    "?": ("Slash", 191, "?", 8),
}


def write_outputs(out: Path, items: dict[str, int], *, seed: int = 0) -> None:
    """A ledger in `out` whose items (key → number of outputs) are completed, each output a
    real PNG under images/ (colours from `seed`, so a redo makes different bytes)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    with Ledger.open(out) as ledger:
        payload: dict[str, Any] = {"image_urls": ["https://example.com/in.png"], "seed": seed}
        ledger.plan(
            [PlanItem(key, {"prompt": f"edit {key}", **payload}) for key in items],
            redo_changed=True,
        )
        for n, (key, count) in enumerate(items.items()):
            ledger.mark_submitted(key, f"req-{key}-{seed}", None, None, None)
            ledger.mark_completed(
                key,
                [_png(out, key, i, n + seed) for i in range(count)],
                seed=1,
                timings={},
                nsfw=[],
            )


def _png(out: Path, key: str, index: int, shade: int) -> OutputRecord:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (30 * shade % 256, 40 * index % 256, 160)).save(buf, "PNG")
    data = buf.getvalue()
    rel = f"images/{key}_{index}.png"
    (out / rel).write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    return OutputRecord(index, rel, "https://sim/x", len(data), sha, 40, 30, "image/png")


@pytest.fixture
def outputs(tmp_path: Path) -> Callable[..., Path]:
    """outputs({"a": 1, "b": 2}) → an output folder with those completed items."""

    def make(items: dict[str, int], *, seed: int = 0) -> Path:
        out = tmp_path / "out"
        write_outputs(out, items, seed=seed)
        return out

    return make


@pytest.fixture
async def demo_output(runner: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo job (manifests/demo.yaml: 13 items, one with 2 outputs) run against the
    simulator: real photographs in, pictures out, the report written."""
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    monkeypatch.chdir(tmp_path)  # the cards name manifests/demo.yaml:line, as in the demo
    await runner.start()
    spec = runner.spec(tmp_path / "manifests" / "demo.yaml", name="demo")
    summary = await runner.run(spec)
    assert summary.exit_code == 0, summary
    return spec.output


# --- the browser over the DevTools protocol ------------------------------------------------


class Tab:
    """One page target: commands, JavaScript, keys, mouse clicks and screenshots."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, session=self.session, **params)

    async def js(self, expression: str) -> Any:
        """The value of `expression` (awaited if a promise); a thrown error fails the test."""
        reply = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    async def until(self, condition: str) -> Any:
        """Wait (in the page, checking each 20 ms) until `condition` is truthy; its value."""
        return await self.js(
            "new Promise(function (done) { (function check() { var v; try { v = ("
            + condition
            + "); } catch (e) { v = null; } if (v) done(v); else setTimeout(check, 20); })(); })"
        )

    async def goto(self, url: str, ready: str = "document.readyState === 'complete'") -> None:
        await self.send("Page.navigate", url=url)
        await self.until(f"location.href !== 'about:blank' && {ready}")

    async def press(self, *keys: str) -> None:
        """Type each key as a person would (keyDown, char, keyUp)."""
        for key in keys:
            if key in KEYS:
                code, vk, text, modifiers = KEYS[key]
            else:
                code, vk, text, modifiers = f"Key{key.upper()}", ord(key.upper()), key, 0
            common = {"key": key, "code": code, "windowsVirtualKeyCode": vk, "modifiers": modifiers}
            await self.send("Input.dispatchKeyEvent", type="keyDown", text=text, **common)
            await self.send("Input.dispatchKeyEvent", type="keyUp", **common)

    async def type(self, text: str) -> None:
        await self.send("Input.insertText", text=text)

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element `selector` matches."""
        box = await self.js(
            f"(function () {{ var e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); var r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def screenshot(self, dest: Path, width: int = 1400, height: int = 1000) -> Path:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        await self.until("document.body.dataset.thumbs !== 'loading'")
        shot = await self.send("Page.captureScreenshot", format="png")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(base64.b64decode(shot["data"]))
        return dest


class Browser:
    """A headless Chromium and one websocket to it (flattened sessions, one per tab)."""

    def __init__(self, proc: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse):
        self.proc = proc
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            future = self._waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)

    async def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send_json(message)
        reply = await asyncio.wait_for(future, BROWSER_TIMEOUT)
        assert "error" not in reply, (method, reply["error"])
        result: dict[str, Any] = reply["result"]
        return result

    async def new_tab(self) -> Tab:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        tab = Tab(self, attached["sessionId"])
        await tab.send("Page.enable")
        await tab.send("Runtime.enable")
        return tab


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("FIRERED_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not installed (.ci/run installs it with apt-get)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    proc = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--remote-debugging-port=0",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        url = await asyncio.wait_for(_devtools_url(proc.stderr), BROWSER_TIMEOUT)
        drain = asyncio.create_task(_drain(proc.stderr))
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url, max_msg_size=0) as ws,
        ):
            chrome = Browser(proc, ws)
            try:
                yield chrome
            finally:
                chrome._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await chrome._reader
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        if drain is not None:
            await drain


async def _devtools_url(stderr: asyncio.StreamReader) -> str:
    """The browser's websocket URL, from the line Chromium prints on stderr when it listens."""
    while line := await stderr.readline():
        text = line.decode(errors="replace").strip()
        if text.startswith("DevTools listening on "):
            return text.removeprefix("DevTools listening on ")
    raise AssertionError("chromium exited without a DevTools URL")


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
