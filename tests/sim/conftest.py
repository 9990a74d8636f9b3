"""Fixtures for the simulator's tests: a running simulator and a plain aiohttp client for it.

`start_sim(**config)` starts a `Simulator` (fast defaults: latency 0) and returns a `SimClient`,
a thin helper over `aiohttp.ClientSession` that speaks raw HTTP, so these tests exercise the
wire protocol and nothing of the project's own fal client.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from PIL import Image

from batch.sim import Simulator

ENDPOINT = "fal-ai/firered-image-edit"
WAIT_S = 10.0  # upper bound for anything a test waits on; never reached when things work
HISTORY_PATH = "/v1/models/requests/by-endpoint"  # the Platform API's request history


def png_data_uri(
    width: int = 8, height: int = 6, color: tuple[int, int, int] = (200, 30, 30)
) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class SimClient:
    sim: Simulator
    session: aiohttp.ClientSession
    endpoint: str = ENDPOINT

    @property
    def url(self) -> str:
        return self.sim.url

    async def call(self, method: str, url: str, **kwargs: Any) -> Reply:
        if not url.startswith("http"):
            url = self.sim.url + url
        async with self.session.request(method, url, **kwargs) as resp:
            headers = {k.lower(): v for k, v in resp.headers.items()}
            return Reply(resp.status, headers, await resp.text())

    async def submit(self, payload: Any, endpoint: str = ENDPOINT, **kwargs: Any) -> dict[str, Any]:
        reply = await self.call("POST", f"/{endpoint}", json=payload, **kwargs)
        assert reply.status == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    async def status(self, submitted: dict[str, Any], logs: str | None = None) -> Reply:
        params = {"logs": logs} if logs is not None else None
        return await self.call("GET", submitted["status_url"], params=params)

    async def wait_for(
        self, submitted: dict[str, Any], state: str = "COMPLETED", logs: str = "0"
    ) -> dict[str, Any]:
        """Poll status until it reports `state`; returns that status body."""
        async with asyncio.timeout(WAIT_S):
            while True:
                reply = await self.status(submitted, logs)
                assert reply.status in (200, 202), reply.text
                body: dict[str, Any] = reply.json()
                if body["status"] == state:
                    return body
                await asyncio.sleep(0.005)

    async def result(self, submitted: dict[str, Any]) -> Reply:
        return await self.call("GET", submitted["response_url"])

    async def history(
        self, params: dict[str, str] | list[tuple[str, str]] | None = None, endpoint: str = ""
    ) -> Reply:
        """`GET /v1/models/requests/by-endpoint`; a dict of params without `endpoint_id` gets
        `endpoint` (default: this client's), a list of pairs is sent as it is."""
        if not isinstance(params, list):
            params = {"endpoint_id": endpoint or self.endpoint, **(params or {})}
        return await self.call("GET", HISTORY_PATH, params=params)

    async def wait_ended(self, count: int) -> None:
        """Wait until `count` jobs exist and all have completed (read off the simulator)."""
        async with asyncio.timeout(WAIT_S):
            while len(self.sim.jobs) < count or any(r.completed_at is None for r in self.sim.jobs):
                await asyncio.sleep(0.005)


StartSim = Callable[..., Awaitable[SimClient]]


@pytest.fixture
def make_png() -> Callable[..., str]:
    """`make_png(width, height, color)` -> a PNG data URI."""
    return png_data_uri


@pytest.fixture
def png_uri() -> str:
    return png_data_uri()


@pytest.fixture
def payload(png_uri: str) -> dict[str, Any]:
    return {"prompt": "make the sky blue", "image_urls": [png_uri]}


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start simulators (stopped at teardown); keyword arguments are `SimConfig` fields."""
    started: list[tuple[Simulator, aiohttp.ClientSession]] = []

    async def start(**config: Any) -> SimClient:
        config.setdefault("latency", "fixed:0")
        sim = Simulator(**config)
        await sim.start()
        connector = aiohttp.TCPConnector(ssl=sim.client_ssl_context() or True)
        session = aiohttp.ClientSession(
            headers={"Authorization": f"Key {sim.key}"}, connector=connector
        )
        started.append((sim, session))
        return SimClient(sim, session)

    yield start
    for sim, session in reversed(started):
        await session.close()
        await sim.stop()


@pytest.fixture
async def api(start_sim: StartSim) -> SimClient:
    """A simulator with the default config (capacity 2, no latency, no faults)."""
    return await start_sim()
