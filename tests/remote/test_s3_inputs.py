"""Manifest images in object storage (s3://bucket/key): keyed on the URI, sent to fal as
presigned URLs that fal (here the simulator) fetches."""

from __future__ import annotations

import pytest
from support import png_bytes, write_csv

from batch.errors import ExitCode
from batch.ledger import Ledger
from batch.manifest import scan
from batch.manifest.localfiles import LocalFiles
from batch.pipeline.uploads import Uploader
from batch.remote import open_store

pytest.importorskip("obstore")


async def test_s3_images_are_sent_presigned_and_the_item_keeps_the_uri(runner, moto_s3):
    store = open_store(moto_s3.url())
    await store.put("in/cat.png", png_bytes(24, 16))
    uri = f"{moto_s3.url()}/in/cat.png"
    manifest = runner.tmp / "m.csv"
    write_csv(manifest, [{"id": "cat", "prompt": "make it blue", "image_urls": uri}])
    sim = await runner.start()
    summary = await runner.run(runner.spec(manifest))
    # The simulator fetched the image from the bucket (an s3:// URI it cannot fetch: 422).
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert sim.counters.requests_for("submit") == 1
    with Ledger.open(runner.tmp / "out") as ledger:
        row = ledger.get("cat")
    assert row is not None and row.payload["image_urls"] == [uri]  # keyed on the URI
    assert row.state == "completed"


async def test_the_uploader_presigns_object_uris_and_leaves_the_rest(moto_s3):
    uploader = Uploader(None, None, None)  # type: ignore[arg-type]  # no local files here
    uri = f"{moto_s3.url()}/in/a.png"
    sent = await uploader.prepare({"prompt": "x", "image_urls": [uri, "https://x.test/b.png"]})
    signed, plain = sent["image_urls"]
    assert signed.startswith(moto_s3.endpoint) and "X-Amz-Signature=" in signed
    assert plain == "https://x.test/b.png"
    assert uploader.stats.presigned == 1


def test_a_malformed_object_uri_is_an_input_error_with_its_line(tmp_path):
    manifest = tmp_path / "m.csv"
    rows = [
        {"id": "a", "prompt": "x", "image_urls": "s3://bucket/in/a.png"},
        {"id": "b", "prompt": "x", "image_urls": "s3://"},
        {"id": "c", "prompt": "x", "image_urls": "gs://b/"},
    ]
    write_csv(manifest, rows)
    result = scan(manifest, files=LocalFiles(), skip_invalid=True)
    assert result.items == 1
    assert [e.split(": ", 1)[0].rsplit(":", 1)[1] for e in result.errors] == ["3", "4"]
    assert "s3://bucket/key URI" in result.errors[0]
