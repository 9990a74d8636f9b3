"""Whole runs from local files: uploads counted by the simulator, the cache within and across
runs, renames, new pixels, data URIs, upload faults, and changed files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import batch.pipeline.uploads as uploads_module
from batch.errors import ExitCode
from batch.job import JobSpec, load_job
from batch.ledger import Ledger
from batch.manifest import ManifestError
from batch.manifest.localfiles import LocalFiles
from batch.pipeline.policy import NO_WAIT
from batch.pipeline.uploads import InputFileError, Uploader
from batch.sim import FaultPlan, FaultRule

MATRIX = "matrix:\n  prompts: [{prompts}]\n  images: [photos/]\n"


def matrix(tmp: Path, *prompts: str) -> Path:
    path = tmp / "m.yaml"
    path.write_text(MATRIX.format(prompts=", ".join(prompts)))
    return path


def uploads(sim) -> int:
    """Files the simulator received (single uploads; no test here goes multipart)."""
    return sim.counters.responses_for("upload", 200)


async def test_a_folder_times_prompts_runs_end_to_end(runner, images):
    """3 prompts × 4 local files: each file uploaded once, one token, every item completes
    (the simulator fetched the uploads to make its outputs); the ledger keeps content refs."""
    sim = await runner.start()
    images.folder(runner.tmp, 4)
    summary = await runner.run(runner.spec(matrix(runner.tmp, "ink", "snow", "night")))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["completed"] == 12
    assert uploads(sim) == 4 and sim.counters.requests_for("upload") == 4
    assert sim.counters.requests_for("token") == 1
    assert len(list((runner.tmp / "out" / "images").iterdir())) == 12
    with Ledger.open(runner.tmp / "out") as ledger:
        sha = hashlib.sha256((runner.tmp / "photos" / "img00.jpg").read_bytes()).hexdigest()
        row = ledger.get(f"p0__{sha[:16]}")
        assert row is not None and row.payload["image_urls"] == [f"local:sha256:{sha}"]
        cached = ledger.uploads.get(sha, sim.url)
        assert cached is not None and cached.url.startswith(f"{sim.url}/files/")


async def test_items_needing_the_same_file_share_one_upload(runner, images):
    """Eight items in flight at once on one file: one upload between them."""
    sim = await runner.start()
    images.folder(runner.tmp, 1)
    prompts = [f"edit {i}" for i in range(8)]
    summary = await runner.run(runner.spec(matrix(runner.tmp, *prompts)))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert uploads(sim) == 1


async def test_the_cache_spans_runs_until_its_age(runner, images):
    """New items on known files upload nothing; past `upload_max_age`, files go again."""
    sim = await runner.start()
    images.folder(runner.tmp, 3)
    first = await runner.run(runner.spec(matrix(runner.tmp, "a")))
    assert first.exit_code == ExitCode.OK and uploads(sim) == 3
    second = await runner.run(runner.spec(matrix(runner.tmp, "a", "b")))
    assert second.exit_code == ExitCode.OK and second.plan["new"] == 3
    assert uploads(sim) == 3
    assert sim.counters.requests_for("token") == 1
    third = await runner.run(runner.spec(matrix(runner.tmp, "a", "b", "c"), upload_max_age=1e-6))
    assert third.exit_code == ExitCode.OK and third.plan["new"] == 3
    assert uploads(sim) == 6


async def test_rename_is_no_work_new_pixels_are_a_new_item(runner, images):
    sim = await runner.start()
    photos = images.folder(runner.tmp, 3)
    spec = runner.spec(matrix(runner.tmp, "a", "b"))
    assert (await runner.run(spec)).exit_code == ExitCode.OK
    submits, sent = sim.counters.accepted_submits, uploads(sim)
    os.rename(photos / "img01.jpg", photos / "renamed.jpg")
    again = await runner.run(spec)
    assert again.plan == {"new": 0, "completed": 6, "resume": 0, "changed": 0, "missing": 0}
    assert (sim.counters.accepted_submits, uploads(sim)) == (submits, sent)
    images.write(photos / "renamed.jpg", color=(0, 255, 0), fmt="JPEG")
    changed = await runner.run(spec)
    assert changed.exit_code == ExitCode.OK
    assert (changed.plan["new"], changed.plan["missing"]) == (2, 2)
    assert sim.counters.accepted_submits == submits + 2
    assert uploads(sim) == sent + 1


async def test_inputs_data_uri_sends_files_inline(runner, images):
    sim = await runner.start()
    images.folder(runner.tmp, 2)
    summary = await runner.run(runner.spec(matrix(runner.tmp, "a"), inputs="data-uri"))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert sim.counters.requests_for("upload") == 0
    assert sim.counters.requests_for("token") == 0


async def test_upload_faults_are_retried(runner, images):
    """429 (Retry-After), 5xx and dropped connections on the token and upload routes."""
    sim = await runner.start(
        faults=FaultPlan(
            seed=3,
            rules=[
                FaultRule(kind="http_error", route="token", status=503, max=1),
                FaultRule(kind="drop_before", route="token", max=1),
                FaultRule(kind="rate_limit", route="upload", retry_after=0.01, max=2),
                FaultRule(kind="http_error", route="upload", status=502, max=2),
                FaultRule(kind="drop_before", route="upload", max=2),
                FaultRule(kind="drop_after", route="upload", max=1),
            ],
        )
    )
    images.folder(runner.tmp, 3)
    summary = await runner.run(runner.spec(matrix(runner.tmp, "a", "b")))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert sim.counters.faults_injected(route="upload") == 7
    assert sim.counters.faults_injected(route="token") == 2
    with Ledger.open(runner.tmp / "out") as ledger:
        assert ledger.uploads.count() == 3


async def test_bad_files_stop_the_run_before_anything_is_sent(runner, images, monkeypatch):
    monkeypatch.chdir(runner.tmp)
    sim = await runner.start()
    images.folder(runner.tmp, 2)
    (runner.tmp / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ManifestError) as caught:
        await runner.run(runner.spec(matrix(runner.tmp, "a")))
    assert caught.value.errors == [
        "m.yaml:3: image: photos/broken.jpg: not an image (Pillow cannot identify it)"
    ]
    assert sum(sim.counters.requests.values()) == 0


async def test_a_file_changed_after_planning_fails_its_item_without_uploading(
    start_storage, images, tmp_path: Path
):
    """The bytes are checked as they are read: other pixels never go out under the old key."""
    sim, storage = await start_storage()
    photos = images.folder(tmp_path, 1)
    path = photos / "img00.jpg"
    with Ledger.open(tmp_path / "out") as ledger:
        files = LocalFiles()
        file = files.resolve(str(path))
        ledger.uploads.record_files([file])
        uploader = Uploader(storage, ledger.uploads, NO_WAIT)
        images.write(path, color=(1, 1, 1), fmt="JPEG")
        with pytest.raises(InputFileError, match="changed since the run was planned"):
            await uploader.prepare({"prompt": "x", "image_urls": [file.ref]})
        path.unlink()
        with pytest.raises(InputFileError, match="no longer exists"):
            await uploader.url_for(file.sha256)
    assert sim.counters.requests_for("upload") == 0


async def test_a_changed_file_fails_only_its_items(runner, images, monkeypatch):
    """In a run: the item whose file changed between planning and upload fails as `input`."""
    sim = await runner.start()
    photos = images.folder(runner.tmp, 2)
    real = uploads_module.Uploader.url_for
    victim = photos / "img01.jpg"
    sha = hashlib.sha256(victim.read_bytes()).hexdigest()

    async def url_for(self, sha256: str) -> str:
        if sha256 == sha and victim.exists():
            images.write(victim, color=(9, 9, 9), fmt="JPEG")  # edited while the run goes
        return await real(self, sha256)

    monkeypatch.setattr(uploads_module.Uploader, "url_for", url_for)
    summary = await runner.run(runner.spec(matrix(runner.tmp, "a")))
    assert summary.counts == {"pending": 0, "submitted": 0, "completed": 1, "failed": 1}
    assert summary.stats["failed_by_kind"] == {"input": 1}
    assert uploads(sim) == 1


async def test_queue_local_serves_uploads_too(runner, images):
    """The embedded simulator (`queue: local`, the demo's way) is the storage API as well."""
    images.folder(runner.tmp, 2)
    spec = JobSpec.for_manifest(
        matrix(runner.tmp, "a"), queue="local", output=runner.tmp / "out", sim={"latency": "0"}
    )
    summary = await runner.run(spec, credentials=None)
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["completed"] == 2


async def test_a_job_defaults_image_is_uploaded(runner, images):
    """An image in the job file's `defaults` (relative to the job file) goes like the others."""
    sim = await runner.start()
    images.write(runner.tmp / "jobs" / "logo.png")
    (runner.tmp / "m.csv").write_text("id,prompt\na,put the logo on it\nb,and here\n")
    (runner.tmp / "jobs" / "j.yaml").write_text(
        f"manifest: ../m.csv\nqueue: {sim.url}\nrest_url: {sim.url}\n"
        f"output: {runner.tmp / 'out'}\ndefaults: {{image_urls: [logo.png]}}\n"
    )
    summary = await runner.run(load_job(runner.tmp / "jobs" / "j.yaml"))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert uploads(sim) == 1


async def test_a_lost_answer_of_a_submit_with_uploaded_files_is_found_by_what_was_sent(
    runner, images
):
    """The history holds the uploaded URLs, not the manifest's local refs: the ledger keeps the
    sent form, so the lost submit is matched and re-attached, not paid twice."""
    sim = await runner.start(
        faults=FaultPlan(seed=2, rules=[FaultRule(kind="drop_after", route="submit", max=2)])
    )
    images.folder(runner.tmp, 2)
    summary = await runner.run(runner.spec(matrix(runner.tmp, "ink", "snow")))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.recovered == 2 and summary.possible_duplicates == 0
    assert sim.counters.accepted_submits == 4 and sim.counters.paid_twice == 0


async def test_after_a_crash_the_submit_is_matched_by_its_uploaded_form(runner, images):
    """A run died after sending a submit with uploaded files and before recording its id: the
    ledger kept what was sent (the uploaded URLs), so the next run finds it in the history."""
    import sqlite3
    import time

    from batch.ledger.models import canonical_json

    sim = await runner.start()
    images.folder(runner.tmp, 1)
    spec = runner.spec(matrix(runner.tmp, "ink", "snow"))
    assert (await runner.run(spec)).exit_code == ExitCode.OK
    with Ledger.open(runner.tmp / "out") as ledger:
        row = next(r for r in (ledger.get(k) for k in _keys(ledger)) if r is not None)
    sent = sim.history._entries[row.request_id].json_input  # what fal received
    assert sent is not None and sent != row.payload  # uploaded URLs, not local refs
    conn = sqlite3.connect(runner.tmp / "out" / "ledger.sqlite")
    try:
        with conn:  # as the killed run left it: sent, answer never recorded
            conn.execute(
                "UPDATE items SET state = 'pending', request_id = NULL, status_url = NULL,"
                " response_url = NULL, cancel_url = NULL, completed_at = NULL,"
                " submit_started_at = ?, sent_payload = ? WHERE key = ?",
                (time.time() - 1, canonical_json(sent), row.key),
            )
            conn.execute("DELETE FROM outputs WHERE item_key = ?", (row.key,))
            conn.execute("DELETE FROM requests WHERE item_key = ?", (row.key,))
    finally:
        conn.close()

    summary = await runner.run(spec)

    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.recovered == 1 and summary.stats["submits"] == 0
    assert sim.counters.accepted_submits == 2
    with Ledger.open(runner.tmp / "out") as ledger:
        again = ledger.get(row.key)
    assert again is not None and again.request_id == row.request_id and again.recovered


def _keys(ledger: Ledger) -> list[str]:
    return [key for (key,) in ledger._conn.execute("SELECT key FROM items ORDER BY key")]


async def test_a_simulator_queue_url_is_all_a_run_with_local_images_needs(runner, images):
    """No rest_url: the queue URL answers /_sim/health, so uploads go to it too."""
    sim = await runner.start()
    images.folder(runner.tmp, 2)
    summary = await runner.run(runner.spec(matrix(runner.tmp, "ink"), rest_url=None))
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert uploads(sim) == 2


async def test_without_rest_url_another_queue_uploads_to_fals_storage(tmp_path):
    from support import free_port

    from batch.fal import DEFAULT_REST_URL, Credentials, QueueClient
    from batch.pipeline.uploads import storage_url

    port = free_port()
    (tmp_path / "m.csv").write_text("prompt,image_urls\nx,https://a.test/b.png\n")
    proxy = f"http://127.0.0.1:{port}"  # nothing listens: not a simulator
    spec = JobSpec.for_manifest(tmp_path / "m.csv", queue=proxy)
    async with QueueClient(base_url=proxy, credentials=Credentials("k")) as client:
        assert await storage_url(spec, client) == DEFAULT_REST_URL
        explicit = spec.with_overrides(rest_url="https://storage.example.com/")
        assert await storage_url(explicit, client) == "https://storage.example.com"
