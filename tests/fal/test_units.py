"""Endpoint URL rules, status parsing, SSE parsing, data URIs and credentials."""

import pytest

from batch.fal.auth import Credentials, credentials_from_env
from batch.fal.client import parse_status
from batch.fal.endpoints import parse_endpoint, request_url, submit_url
from batch.fal.errors import TransientError
from batch.fal.sse import iter_events
from batch.fal.storage import decode_data_uri, encode_data_uri
from batch.fal.types import Completed, InProgress, Queued

Q = "https://queue.fal.run"


@pytest.mark.parametrize(
    ("endpoint", "submit", "base"),
    [
        ("fal-ai/firered-image-edit", "fal-ai/firered-image-edit", "fal-ai/firered-image-edit"),
        ("fal-ai/flux/dev", "fal-ai/flux/dev", "fal-ai/flux"),
        (
            "fal-ai/kling-video/v2.1/pro/image-to-video",
            "fal-ai/kling-video/v2.1/pro/image-to-video",
            "fal-ai/kling-video",
        ),
        ("workflows/acme/wf/run", "workflows/acme/wf/run", "workflows/acme/wf"),
        ("comfy/acme/graph", "comfy/acme/graph", "comfy/acme/graph"),
        ("123-myapp", "123/myapp", "123/myapp"),
        ("/fal-ai//flux/dev/", "fal-ai/flux/dev", "fal-ai/flux"),
    ],
)
def test_endpoint_urls(endpoint, submit, base):
    """fal-protocol §5: submit to the full id, address requests under the app root."""
    assert submit_url(Q, endpoint) == f"{Q}/{submit}"
    assert request_url(Q, endpoint, "abc") == f"{Q}/{base}/requests/abc"


@pytest.mark.parametrize("bad", ["", "justone", "workflows/acme"])
def test_invalid_endpoint_ids(bad):
    with pytest.raises(ValueError, match="invalid endpoint id"):
        parse_endpoint(bad)


def test_status_bodies():
    assert parse_status({"status": "IN_QUEUE", "queue_position": 3}) == Queued(3)
    assert parse_status({"status": "IN_QUEUE"}) == Queued(0)
    progress = parse_status(
        {"status": "IN_PROGRESS", "logs": [{"message": "loading", "level": "INFO"}]}
    )
    assert isinstance(progress, InProgress)
    assert progress.logs[0].message == "loading"
    assert parse_status({"status": "IN_PROGRESS", "logs": None}) == InProgress()
    done = parse_status({"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 1.5}})
    assert done == Completed(metrics={"inference_time": 1.5})
    assert not done.failed
    failed = parse_status(
        {"status": "COMPLETED", "logs": None, "error": "oops", "error_type": "runner_disconnected"}
    )
    assert isinstance(failed, Completed)
    assert failed.failed and failed.error_type == "runner_disconnected"
    with pytest.raises(TransientError, match="unknown status 'FAILED'"):
        parse_status({"status": "FAILED"})


async def _lines(chunks):
    for chunk in chunks:
        yield chunk


async def test_sse_parser_skips_keepalives_and_joins_data():
    raw = [
        b": ping\n",
        b"\n",
        b'data: {"a": 1}\n',
        b"\n",
        b"event: message\r\n",
        b"data: line1\r\n",
        b"data:line2\r\n",
        b"\r\n",
        b": ping\n",
        b"data: tail",
    ]
    events = [e async for e in iter_events(_lines(raw))]
    assert events == ['{"a": 1}', "line1\nline2", "tail"]


def test_data_uri_round_trip():
    uri = encode_data_uri(b"\x89PNG...", "image/png")
    assert uri.startswith("data:image/png;base64,")
    assert decode_data_uri(uri) == (b"\x89PNG...", "image/png")
    assert decode_data_uri("data:,hello%20world") == (b"hello world", "text/plain")
    with pytest.raises(ValueError):
        decode_data_uri("https://example.com/a.png")


def test_credentials_from_env_and_hidden():
    assert credentials_from_env({}) is None
    creds = credentials_from_env({"FAL_KEY": " secret-key "})
    assert creds is not None and creds.header == "Key secret-key"
    assert "secret" not in repr(creds) and "secret" not in str(creds)
    pair = credentials_from_env({"FAL_KEY_ID": "id", "FAL_KEY_SECRET": "sec"})
    assert pair is not None and pair.header == "Key id:sec"
    with pytest.raises(ValueError):
        Credentials("  ")
