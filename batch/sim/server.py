"""`Simulator`: the fal-compatible queue server, started in-process or served by the CLI.

    async with Simulator(SimConfig(capacity=1, latency="fixed:0.1")) as sim:
        ...  # talk to sim.url with `Authorization: Key {sim.key}`; read sim.counters, sim.jobs

Jobs submitted with `?fal_webhook=<url>` are delivered there, signed (`sim.webhooks`,
`sim.signer`; the public key at `sim.jwks_url`).

`Simulator(clock=ManualClock())` puts the jobs' stamps, result retention, CDN token expiry, file
lifetimes and the submit rate limit on a clock the caller advances (`clock.py`); the default is
`time.time`.

`sim.history` is what `GET /v1/models/requests/by-endpoint` lists (`history.py`): every
accepted request, its end recorded when the model completes it.

`sim.billing` holds the prices and the balance (`sim.billing.top_up(5)`); the money counters are
on `sim.counters`. With `cdn_host` (or a `cdn_down` fault) the CDN is served on a port of its own
too, `sim.cdn_url`, which the storage token names as `base_url`; with a `cdn_down` fault of
status 0 that port is held but never listens, so connecting to it is refused.

TLS: `sim.ca_file` is the CA that signed the server certificate; a client not given it fails to
verify the server (`client_ssl_context()` trusts it). `tls_names` sets the names the certificate
carries, so a client connecting by another name gets a hostname mismatch.

`run_forever(config)` serves until Ctrl-C and prints the URL (never the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from batch.sim.app import QueueApp
from batch.sim.billing import Billing
from batch.sim.clock import Clock
from batch.sim.config import SimConfig
from batch.sim.counters import Counters
from batch.sim.history import History
from batch.sim.jobs import Job, JobRecord
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
        self.billing = Billing(self.config, self.counters)
        self.store = FileStore(clock)
        self.signer = WebhookSigner()
        self.webhooks = WebhookSender(self.config, self.counters, self.signer)
        self.history = History(self.config, clock)
        self._model: Model | None = None
        self._runner: web.AppRunner | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._url: str | None = None
        self._cdn_url: str | None = None
        self._held: socket.socket | None = None  # the refusing CDN port (cdn_down, status 0)
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
    def cdn_url(self) -> str:
        """The CDN host's base URL: its own port with `cdn_host`, else the main URL."""
        return self._cdn_url or self.url

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
        config = self.config
        ssl_context: ssl.SSLContext | None = None
        if config.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="fal-sim-tls-")
            names = list(config.tls_names) if config.tls_names is not None else None
            files = make_tls(Path(self._tmp.name), [config.host], names=names)
            self.ca_file = files.ca_file
            ssl_context = files.server_context()
        model = Model(config, self.store, self.clock, counters=self.counters, billing=self.billing)
        await model.start()
        self._model = model
        await self.webhooks.start()
        model.on_complete = self._completed
        queue_app = QueueApp(
            config,
            self.store,
            model,
            self.counters,
            self.signer,
            self.clock,
            self.billing,
            self.history,
        )
        runner = web.AppRunner(
            queue_app.build(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        self._runner = runner
        scheme = "https" if ssl_context is not None else "http"
        host = config.host
        shown = f"[{host}]" if ":" in host else host
        try:
            await web.TCPSite(runner, host, config.port, ssl_context=ssl_context).start()
            self._url = f"{scheme}://{shown}:{runner.addresses[0][1]}"
            if config.cdn_host:
                cdn_port = await self._start_cdn(runner, ssl_context)
                queue_app.cdn_port = cdn_port
                queue_app.cdn_url = self._cdn_url = f"{scheme}://{shown}:{cdn_port}"
        except BaseException:
            await self.stop()
            raise

    def _completed(self, job: Job) -> None:
        """The model's one completion hook: the history keeps the output, then the webhook."""
        self.history.ended(job)
        self.webhooks.deliver(job)

    async def _start_cdn(self, runner: web.AppRunner, ssl_context: ssl.SSLContext | None) -> int:
        """The CDN host's port: a second site of the same app, or, when a `cdn_down` fault of
        status 0 is planned, a port held bound but never listening (connections refused)."""
        host = self.config.host
        if any(r.kind == "cdn_down" and r.status == 0 for r in self.config.faults.rules):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            held = socket.socket(family, socket.SOCK_STREAM)
            held.bind((host, 0))
            self._held = held
            port: int = held.getsockname()[1]
            return port
        before = list(runner.addresses)
        await web.TCPSite(runner, host, 0, ssl_context=ssl_context).start()
        (address,) = [a for a in runner.addresses if a not in before]
        port = address[1]
        return port

    async def stop(self) -> None:
        """Stop the model (running jobs are cancelled, streams close) and the server."""
        if self._model is not None:
            await self._model.stop()
        await self.webhooks.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._url = None
        self._cdn_url = None
        if self._held is not None:
            self._held.close()
            self._held = None
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
