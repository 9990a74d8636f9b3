"""Serving: TLS with the written CA, the CLI entry point, and shutdown."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import aiohttp
import pytest

from batch.sim import FaultPlan, FaultRule, SimConfig, Simulator, serve


async def test_tls_serves_https_trusted_by_the_written_ca(
    start_sim: Any, payload: dict[str, Any]
) -> None:
    api = await start_sim(tls=True)
    assert api.url.startswith("https://127.0.0.1:")
    assert api.sim.ca_file is not None and api.sim.ca_file.read_text().startswith("-----BEGIN")
    sub = await api.submit(payload)
    assert sub["status_url"].startswith("https://")
    await api.wait_for(sub)
    image_url = (await api.result(sub)).json()["images"][0]["url"]
    assert image_url.startswith(api.url + "/files/")
    async with api.session.get(image_url) as resp:
        assert resp.status == 200
    localhost = api.url.replace("127.0.0.1", "localhost")
    async with api.session.get(f"{localhost}/_sim/health") as resp:
        assert resp.status == 200


async def test_tls_is_refused_without_the_ca(start_sim: Any) -> None:
    api = await start_sim(tls=True)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"{api.url}/_sim/health")
    context = ssl.create_default_context(cafile=str(api.sim.ca_file))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{api.url}/_sim/health", ssl=context) as resp,
    ):
        assert resp.status == 200


async def test_ca_file_is_removed_on_stop(start_sim: Any) -> None:
    api = await start_sim(tls=True)
    ca_file = api.sim.ca_file
    await api.sim.stop()
    assert ca_file is not None and not ca_file.exists()


async def test_serve_prints_the_url_but_not_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    config = SimConfig(key="do-not-print-me")
    ready = asyncio.Event()
    task = asyncio.create_task(serve(config, ready))
    await asyncio.wait_for(ready.wait(), 10)
    out = capsys.readouterr().out
    url = out.split("listening on ", 1)[1].split()[0]
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_sim/health") as resp:
        assert resp.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "do-not-print-me" not in out


async def test_double_start_and_busy_port_fail_cleanly(start_sim: Any) -> None:
    api = await start_sim()
    with pytest.raises(RuntimeError):
        await api.sim.start()
    port = int(api.url.rsplit(":", 1)[1])
    clash = Simulator(port=port)
    with pytest.raises(OSError):
        await clash.start()
    with pytest.raises(RuntimeError):
        _ = clash.url


async def test_dropped_connection_over_tls_is_a_clean_disconnect(
    start_sim: Any, payload: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    rule = FaultRule(kind="drop_after", route="submit", max=1)
    api = await start_sim(tls=True, faults=FaultPlan(rules=[rule]))
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)),
    ):
        await api.call("POST", f"/{api.endpoint}", json=payload)
    assert api.sim.counters.accepted_submits == 1
    await api.submit(payload)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
