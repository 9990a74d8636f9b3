"""Shared fixtures: a running simulator and our QueueClient pointed at it, over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from support import TEST_KEY, Runner

from batch.fal import Credentials, QueueClient, Timeouts
from batch.sim import Simulator

StartSim = Callable[..., Awaitable[tuple[Simulator, QueueClient]]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """start_sim(**sim_config) -> (simulator, client); both closed after the test."""
    async with AsyncExitStack() as stack:

        async def start(
            *, timeouts: Timeouts | None = None, key: str = TEST_KEY, **config: Any
        ) -> tuple[Simulator, QueueClient]:
            config.setdefault("latency", "fixed:0")
            sim = await stack.enter_async_context(Simulator(key=TEST_KEY, **config))
            client = await stack.enter_async_context(
                QueueClient(
                    base_url=sim.url,
                    credentials=Credentials(key),
                    timeouts=timeouts,
                    ssl_context=sim.client_ssl_context(),
                )
            )
            return sim, client

        yield start


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    async with AsyncExitStack() as stack:
        yield Runner(tmp_path, stack)
