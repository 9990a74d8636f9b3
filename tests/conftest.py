"""Shared fixtures: a running simulator and our QueueClient pointed at it, over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from support import TEST_KEY, item_rows, write_csv

from batch.fal import Credentials, QueueClient, Timeouts
from batch.job import JobSpec
from batch.pipeline.policy import RetryPolicy
from batch.pipeline.run import RunSummary, run_job
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


FAST = RetryPolicy(attempts=6, backoff_min=0.001, backoff_max=0.01, retry_after_max=0.05)


class Runner:
    """Starts a simulator (queue and storage) on demand and runs jobs against it, with fast
    retries (the `runner` fixture, for the pipeline and uploads tests)."""

    def __init__(self, tmp: Path, stack: AsyncExitStack) -> None:
        self.tmp = tmp
        self.stack = stack
        self.sim: Simulator | None = None

    async def start(self, **config: Any) -> Simulator:
        config.setdefault("latency", "fixed:0.01")
        config.setdefault("capacity", 8)
        self.sim = await self.stack.enter_async_context(Simulator(key=TEST_KEY, **config))
        return self.sim

    def manifest(self, n: int = 10, name: str = "m.csv", **fields: Any) -> Path:
        path = self.tmp / name
        write_csv(path, item_rows(n, **fields))
        return path

    def spec(self, manifest: Path, **overrides: Any) -> JobSpec:
        assert self.sim is not None
        settings: dict[str, Any] = {
            "queue": self.sim.url,
            "rest_url": self.sim.url,  # storage too, for local files
            "concurrency": 8,
            "rate": 1000,
            "output": self.tmp / "out",
        }
        settings.update(overrides)
        return JobSpec.for_manifest(manifest, **settings)

    async def run(self, spec: JobSpec, **kwargs: Any) -> RunSummary:
        kwargs.setdefault("policy", FAST)
        kwargs.setdefault("credentials", Credentials(TEST_KEY))
        return await run_job(spec, **kwargs)


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    async with AsyncExitStack() as stack:
        yield Runner(tmp_path, stack)
