"""Fixtures for object storage: a store per backend, a clock to move, and moto's S3 server."""

from __future__ import annotations

import logging
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import free_port

from batch.remote import Store, open_store


class Clock:
    """A wall clock that moves only when told: `clock()` is the time, `advance(s)` moves it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same tests on obstore's in-memory store and on a local folder (no native CAS)."""
    pytest.importorskip("obstore")
    if request.param == "memory":
        return open_store("memory:///job/shards/00000-of-00001")
    return open_store(f"file://{tmp_path}/job/shards/00000-of-00001")


@dataclass(frozen=True)
class MotoS3:
    """A bucket on a running moto S3 server; the AWS_* environment points obstore at it."""

    endpoint: str
    bucket: str

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto S3 server (in a thread) for the whole session; its http:// endpoint."""
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """A fresh, empty bucket on moto, with AWS_* set so `open_store("s3://…")` reaches it."""
    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    # moto creates a bucket on an unsigned PUT; boto3 is not needed (nor its warnings)
    request = urllib.request.Request(f"{moto_endpoint}/{bucket}", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
    return MotoS3(endpoint=moto_endpoint, bucket=bucket)
