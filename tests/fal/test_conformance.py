"""The official `fal-client` (1.0.3) completes its flows against the simulator over TLS.

This proves the simulator speaks fal's protocol, not merely what our own client expects: the
official client builds its URLs, parses statuses by key and raises on errors its own way.
It runs in a subprocess because fal_client reads FAL_QUEUE_RUN_HOST when imported.
"""

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from support import ENDPOINT, TEST_KEY, png_uri

from batch.sim import Simulator

PROBE = Path(__file__).parent.parent / "fal_client_probe.py"


async def _probe(sim: Simulator, mode: str, endpoint: str, arguments: dict) -> dict:
    env = {
        **os.environ,
        "FAL_KEY": TEST_KEY,
        "FAL_QUEUE_RUN_HOST": sim.url.removeprefix("https://"),
        "SSL_CERT_FILE": str(sim.ca_file),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROBE),
        mode,
        endpoint,
        json.dumps(arguments),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=40)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out)


@pytest.fixture
async def tls_sim():
    async with Simulator(key=TEST_KEY, tls=True, capacity=1, latency="fixed:0.3") as sim:
        assert sim.url.startswith("https://") and sim.ca_file is not None
        yield sim


async def test_official_client_submit_status_result(tls_sim):
    arguments = {"prompt": "官方客户端 official client", "image_urls": [png_uri()], "seed": 5}
    out = await _probe(tls_sim, "sync", ENDPOINT, arguments)
    assert out["first_status"] in {"Queued", "InProgress"}
    assert out["events"][-1] == "Completed"
    assert out["result"]["seed"] == 5 and out["result"]["prompt"] == arguments["prompt"]
    assert out["result"]["images"][0]["url"].startswith(tls_sim.url + "/files/")
    assert out["status_by_id"] == "Completed"
    assert out["result_by_id"] == out["result"]
    assert tls_sim.counters.accepted_submits == 1


async def test_official_client_sub_path_endpoint(tls_sim):
    """fal_client's own AppId rules for `owner/alias/path` meet the simulator's routes."""
    out = await _probe(
        tls_sim, "sync", "fal-ai/flux/dev", {"prompt": "p", "image_urls": [png_uri()]}
    )
    assert out["events"][-1] == "Completed" and out["result"]["images"]


async def test_official_client_cancel(tls_sim):
    arguments = {"prompt": "cancel me", "image_urls": [png_uri()]}
    out = await _probe(tls_sim, "cancel", ENDPOINT, arguments)
    assert out["queued_status"] == "Queued"
    assert out["cancelled_result_status"] == 499
    assert out["unknown_cancel_status"] == 404
    assert out["completed_cancel_status"] == 400


async def test_official_async_client_subscribe(tls_sim):
    out = await _probe(tls_sim, "async", ENDPOINT, {"prompt": "p", "image_urls": [png_uri()]})
    assert out["result"]["images"][0]["width"] == 16
