"""A validly signed ERROR delivery for a request the queue still reports running is not
trusted: the item stays `submitted` (a later `retry` would otherwise pay again while fal still
runs the original)."""

import json
import sqlite3

from batch.sim import FaultRule


async def test_an_error_webhook_for_a_running_request_is_ignored_by_webhook_serve(hooks):
    sim = await hooks.start(
        latency="fixed:60", faults=hooks.plan(FaultRule(kind="webhook_lost"))
    )  # the request runs for a minute; its own webhook is lost
    spec = hooks.spec(hooks.manifest(1))
    assert (await hooks.run(spec, detach=True)).counts["submitted"] == 1
    service = await hooks.service(spec)
    conn = sqlite3.connect(hooks.tmp / "out" / "ledger.sqlite")
    (rid,) = conn.execute("SELECT request_id FROM items").fetchone()
    conn.close()
    body = json.dumps(
        {
            "request_id": rid,
            "gateway_request_id": rid,
            "status": "ERROR",
            "error": "boom",
            "payload": {"detail": "boom"},
        }
    ).encode()
    headers = sim.signer.headers(rid, sim.config.user_id, body)

    assert await hooks.post(service.url + "hooks/fal", body, headers) == 200
    await service.collector.drain()

    assert service.collector.stats["unconfirmed"] == 1
    conn = sqlite3.connect(hooks.tmp / "out" / "ledger.sqlite")
    assert conn.execute("SELECT state FROM items").fetchone() == ("submitted",)
    conn.close()
    assert sim.counters.accepted_submits == 1


async def test_an_over_long_header_is_one_warning_line_not_a_traceback(hooks, caplog):
    """`webhook serve` answers a malformed request 400 and logs one line."""
    import asyncio
    import logging

    await hooks.start()
    spec = hooks.spec(hooks.manifest(1))
    await hooks.run(spec, detach=True)
    service = await hooks.service(spec)
    host, port = service.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    caplog.set_level(logging.DEBUG, logger="batch.webhooks.http")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /hooks/fal HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n")
    await writer.drain()
    answer = await reader.read(100)
    writer.close()
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    records = [r for r in caplog.records if r.name == "batch.webhooks.http"]
    assert len(records) == 1 and records[0].exc_info is None
    assert records[0].getMessage().startswith("webhook receiver: refused a malformed request:")
    assert "Traceback" not in caplog.text
