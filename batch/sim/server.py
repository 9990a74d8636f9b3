"""`Simulator`: the fal-compatible queue server, started in-process or served by the CLI.

    async with Simulator(SimConfig(capacity=1, latency="fixed:0.1")) as sim:
        ...  # talk to sim.url with `Authorization: Key {sim.key}`; read sim.counters, sim.jobs

Jobs submitted with `?fal_webhook=<url>` are delivered there, signed (`sim.webhooks`,
`sim.signer`; the public key at `sim.jwks_url`).

`Simulator(clock=ManualClock())` puts the jobs' stamps, result retention, CDN token expiry and
the submit rate limit on a clock the caller advances (`clock.py`); the default is `time.time`.

`run_forever(config)` serves until Ctrl-C and prints the URL (never the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from batch.sim.app import QueueApp
from batch.sim.clock import Clock
from batch.sim.config import SimConfig
from batch.sim.counters import Counters
from batch.sim.jobs import JobRecord
from batch.sim.model import Model
from batch.sim.storage import FileStore
from batch.sim.tls import make_tls
from batch.sim.webhooks import WebhookSender, WebhookSigner

SHUTDOWN_TIMEOUT_S = 1.0


class Simulator:
    """A running (after `start()`) simulator bound to `config.host`:`config.port`."""

    def __init__(
        self, config: SimConfig | None = None, *, clock: Clock = time.time, **overrides: Any
    ) -> None:
        base = config or SimConfig()
        if overrides:
            base = SimConfig.model_validate({**base.model_dump(), **overrides})
        self.config = base
        self.clock = clock
        self.counters = Counters()
        self.store = FileStore()
        self.signer = WebhookSigner()
        self.webhooks = WebhookSender(self.config, self.counters, self.signer)
        self._model: Model | None = None
        self._runner: web.AppRunner | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._url: str | None = None
        self.ca_file: Path | None = None

    def __repr__(self) -> str:
        return f"Simulator(url={self._url!r}, capacity={self.config.capacity})"

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:54321` (https with `tls=True`)."""
        if self._url is None:
            raise RuntimeError("the simulator is not running")
        return self._url

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def jwks_url(self) -> str:
        """Where the webhook signing key is published."""
        return f"{self.config.public_url or self.url}/.well-known/jwks.json"

    @property
    def model(self) -> Model:
        if self._model is None:
            raise RuntimeError("the simulator is not running")
        return self._model

    @property
    def jobs(self) -> list[JobRecord]:
        """Every job submitted so far, in submit order (kept after results expire)."""
        return self._model.records if self._model is not None else []

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting this simulator's CA (None without TLS)."""
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        ssl_context: ssl.SSLContext | None = None
        if self.config.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="fal-sim-tls-")
            files = make_tls(Path(self._tmp.name), [self.config.host])
            self.ca_file = files.ca_file
            ssl_context = files.server_context()
        model = Model(self.config, self.store, self.clock)
        await model.start()
        self._model = model
        await self.webhooks.start()
        model.on_complete = self.webhooks.deliver
        app = QueueApp(
            self.config, self.store, model, self.counters, self.signer, self.clock
        ).build()
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.config.host, self.config.port, ssl_context=ssl_context)
        try:
            await site.start()
        except BaseException:
            await self.stop()
            raise
        port = runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        self._url = f"{scheme}://{shown}:{port}"

    async def stop(self) -> None:
        """Stop the model (running jobs are cancelled, streams close) and the server."""
        if self._model is not None:
            await self._model.stop()
        await self.webhooks.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._url = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.ca_file = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve(config: SimConfig, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled, printing where."""
    async with Simulator(config) as sim:
        print(f"fal simulator listening on {sim.url}", flush=True)
        if sim.ca_file is not None:
            print(f"CA certificate: {sim.ca_file}", flush=True)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()


def run_forever(config: SimConfig) -> None:
    """Serve `config` until Ctrl-C (the CLI's `firered-batch sim`)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config))
