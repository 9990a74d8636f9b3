"""Fixtures for webhook tests: a simulator that delivers signed webhooks on a compressed retry
schedule, jobs in `wait: webhook` mode pointed at it, and helpers to forge deliveries."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import FAST, TEST_KEY, Runner, free_port

from batch.fal import Credentials
from batch.job import JobSpec
from batch.pipeline.webhook_serve import WebhookService
from batch.sim import FaultPlan, FaultRule, Simulator

RETRY_SCALE = 0.001  # fal's ~2 h schedule in ~7 s: first retry after 10 ms


def _ledger_state(out: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[str]]:
    """Every item row, every output row and every file under images/: "the ledger untouched"."""
    conn = sqlite3.connect(out / "ledger.sqlite")
    try:
        items = [tuple(r) for r in conn.execute("SELECT * FROM items ORDER BY key")]
        outputs = [tuple(r) for r in conn.execute("SELECT * FROM outputs ORDER BY item_key, idx")]
    finally:
        conn.close()
    images = out / "images"
    files = sorted(p.name for p in images.iterdir()) if images.exists() else []
    return items, outputs, files


class Hooks(Runner):
    """Starts a simulator on demand; builds `wait: webhook` jobs, runs and receivers for it."""

    def __init__(self, tmp: Path, stack: AsyncExitStack) -> None:
        super().__init__(tmp, stack)
        self.port = free_port()
        self.session: aiohttp.ClientSession | None = None
        self.policy = FAST

    async def start(self, **config: Any) -> Simulator:
        config.setdefault("webhook_retry_scale", RETRY_SCALE)
        return await super().start(**config)

    def spec(self, manifest: Path, *, safety_net: float = 5.0, **overrides: Any) -> JobSpec:
        assert self.sim is not None
        webhook = {
            "public_url": f"http://127.0.0.1:{self.port}/hooks/fal",
            "listen": f"127.0.0.1:{self.port}",
            "jwks_url": self.sim.jwks_url,
            "safety_net": safety_net,
        }
        return super().spec(manifest, **{"wait": "webhook", "webhook": webhook, **overrides})

    async def service(self, spec: JobSpec, **options: Any) -> WebhookService:
        """`webhook serve` for `spec`, stopped at the end of the test."""
        options.setdefault("credentials", Credentials(TEST_KEY))
        options.setdefault("policy", FAST)
        return await self.stack.enter_async_context(WebhookService(spec, **options))

    @staticmethod
    def plan(*rules: FaultRule, seed: int = 5) -> FaultPlan:
        return FaultPlan(seed=seed, rules=list(rules))

    def ledger_state(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[str]]:
        return _ledger_state(self.tmp / "out")

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        if self.session is None:
            self.session = await self.stack.enter_async_context(aiohttp.ClientSession())
        async with self.session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status


@pytest.fixture
async def hooks(tmp_path: Path) -> AsyncIterator[Hooks]:
    async with AsyncExitStack() as stack:
        yield Hooks(tmp_path, stack)
