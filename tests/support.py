"""Helpers shared by tests (importable as `support`; fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from batch.fal import Credentials
from batch.job import JobSpec
from batch.pipeline.policy import RetryPolicy
from batch.pipeline.run import run_job
from batch.pipeline.summary import RunSummary
from batch.sim import Simulator

ENDPOINT = "fal-ai/firered-image-edit"
TEST_KEY = "test-key-5f3c0d1e9a"  # what tests grep for in files and logs


def leftovers(folder: Path) -> list[Path]:
    """Temporary files (`.tmp-*`) anywhere under `folder`."""
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]


def png_bytes(
    width: int = 16, height: int = 12, color: tuple[int, int, int] = (10, 120, 200)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def png_uri(width: int = 16, height: int = 12, color: tuple[int, int, int] = (10, 120, 200)) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(width, height, color)).decode()


def edit(prompt: str = "make it blue", **fields: Any) -> dict[str, Any]:
    return {"prompt": prompt, "image_urls": [png_uri()], **fields}


def write_csv(path, rows: list[dict[str, Any]]) -> None:
    """A CSV manifest from row dicts (image_urls lists joined with |)."""
    import csv

    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "|".join(v) if isinstance(v, list) else v for k, v in row.items()})


def item_rows(n: int, **fields: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"item{i:03d}", "prompt": f"edit number {i}", "image_urls": [png_uri()], **fields}
        for i in range(n)
    ]


@dataclass(frozen=True)
class PlanItem:
    """What `Ledger.plan` takes (`ItemLike`): a key, the payload and where it came from."""

    key: str
    payload: dict[str, Any]
    source: str = "m.csv:2"
    endpoint: str = ENDPOINT
    user_id: str | None = None


FAST = RetryPolicy(attempts=6, backoff_min=0.001, backoff_max=0.01, retry_after_max=0.05)


class Runner:
    """Starts a simulator (queue and storage) on demand and runs jobs against it, with fast
    retries (the `runner` fixture; the webhook tests' `Hooks` builds on it)."""

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
        # A lost submit answer is looked for in the simulator's history for 2 s, not the
        # minutes a real queue may need (tests of the bound set their own).
        fal = settings.get("fal")
        if isinstance(fal, dict):
            settings["fal"] = {"history_wait": 2.0, **fal}
        elif fal is None:
            settings["fal"] = {"history_wait": 2.0}
        return JobSpec.for_manifest(manifest, **settings)

    async def run(self, spec: JobSpec, **kwargs: Any) -> RunSummary:
        kwargs.setdefault("policy", FAST)
        kwargs.setdefault("credentials", Credentials(TEST_KEY))
        return await run_job(spec, **kwargs)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_cli(
    *args: str, key: str = TEST_KEY, cwd: Path | None = None, timeout: float = 60.0
) -> tuple[int, str, str]:
    """`firered-batch ARGS` in a process of its own (FAL_KEY=`key`): exit code, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env["FAL_KEY"] = key
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "batch",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


ECHO = "fal-ai/echo"  # a simulator app that answers at once with its input, no pixels


def iso_utc(ts: float) -> str:
    """Epoch seconds as the ISO 8601 UTC text fal's Platform API takes."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def history_items(api: Any, params: Any = None, endpoint: str = ECHO) -> list[Any]:
    """The items of one request-history page (`api`: the simulator tests' client)."""
    reply = await api.history(params, endpoint)
    assert reply.status == 200, reply.text
    listed: list[Any] = reply.json()["items"]
    return listed


def request_ids(listed: list[Any]) -> list[str]:
    return [item["request_id"] for item in listed]
