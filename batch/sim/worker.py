"""What one attempt of a job does, once the model has given it a slot.

An attempt first plays the job's fault plan: a `server_retry` fault fails it transiently after
its service time, an attempt longer than `app_request_timeout_s` fails at that limit (both are
`retry` outcomes the model may requeue, fal's own retries §10), and a `job_error` fault gives
its outcome after the service time. Otherwise the input is validated with `EditInput` (on the
`validated_endpoints`; elsewhere anything that is not a valid edit is passed through), the
input images are fetched, the outputs rendered into the file store and the rest of the
service time waited out. Output files live `media_ttl_s` from when they are stored (by the
model's `clock`), or are pinned with `media_renew_on_result`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from pydantic import ValidationError

from batch.schema import DEFAULT_ENDPOINT, EditInput, image_size_pixels
from batch.sim import edit_models, jobs
from batch.sim.clock import Clock
from batch.sim.config import SimConfig
from batch.sim.imaging import InputImageError, fetch_input, render
from batch.sim.jobs import Job, Outcome
from batch.sim.storage import FileStore


def media_expiry(job: Job, clock: Clock) -> float | None:
    """When a file the job stores (or renews) now expires; None for no expiry."""
    return None if job.media_ttl_s is None else clock() + job.media_ttl_s


async def execute(
    job: Job,
    *,
    config: SimConfig,
    store: FileStore,
    clock: Clock,
    session: aiohttp.ClientSession | None,
) -> Outcome:
    """Run one attempt of `job` and return its outcome (the model completes or requeues)."""
    loop = asyncio.get_running_loop()
    service_time = job.record.service_time
    deadline = loop.time() + service_time
    retry = job.retry_fault
    if retry is not None and job.record.attempts <= retry.failures:
        await asyncio.sleep(service_time)
        return jobs.attempt_failure(retry.error_type or "runner_disconnected")
    limit = config.app_request_timeout_s
    if limit is not None and service_time > limit:
        await asyncio.sleep(limit)
        return jobs.attempt_failure("request_timeout")
    if job.fault is not None:
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        return jobs.from_fault(job.fault)
    endpoint = job.record.endpoint
    if endpoint in edit_models.MODELED and endpoint != DEFAULT_ENDPOINT:
        # Another fal edit model: its own fields (edit_models, from its fal page).
        problems = edit_models.validate_input(endpoint, job.payload)
        if problems:
            return jobs.unprocessable(problems)
        spec = edit_models.render_spec(endpoint, job.payload or {})
    else:
        try:
            edit = EditInput.model_validate(job.payload)
        except ValidationError as exc:
            if endpoint in config.validated_endpoints:
                return jobs.from_validation_error(exc)
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            return jobs.success({"images": [], "input": job.payload})
        spec = edit_models.RenderSpec(
            prompt=edit.prompt,
            image_urls=tuple(edit.image_urls),
            num_images=edit.num_images,
            size=image_size_pixels(edit.image_size),
            output_format=edit.output_format,
            seed=edit.seed,
        )
    try:
        inputs = [
            await fetch_input(session, url, store, index=i) for i, url in enumerate(spec.image_urls)
        ]
        output = await render_outputs(job, spec, inputs, config=config, store=store, clock=clock)
    except InputImageError as exc:
        kind = "file_download_error" if "download" in exc.reason else "image_load_error"
        return jobs.unprocessable([jobs.detail_item(["image_urls", exc.index], str(exc), kind)])
    await asyncio.sleep(max(0.0, deadline - loop.time()))
    return jobs.success(output)


async def render_outputs(
    job: Job,
    edit: edit_models.RenderSpec,
    inputs: list[bytes],
    *,
    config: SimConfig,
    store: FileStore,
    clock: Clock,
) -> dict[str, Any]:
    """Render the edit's images into the file store; returns the model's result body (in the
    shape of the job's endpoint)."""
    seed = edit.seed if edit.seed is not None else job.seed
    size = edit.size
    fmt = "png" if edit.output_format == "png" else "jpeg"  # webp: rendered as jpeg here
    ext, content_type = ("png", "image/png") if fmt == "png" else ("jpg", "image/jpeg")
    images: list[dict[str, Any]] = []
    for i in range(edit.num_images):
        data, width, height = await asyncio.to_thread(
            render, inputs, edit.prompt, seed, size, fmt, i
        )
        name = f"{job.request_id[:8]}_{i}.{ext}"
        key = store.put(
            data,
            content_type,
            name,
            expires_at=media_expiry(job, clock),
            pinned=config.media_renew_on_result,
        )
        job.output_keys.append(key)
        images.append(
            {
                "url": f"{job.base_url}/files/{key}",
                "width": width,
                "height": height,
                "content_type": content_type,
                "file_name": name,
                "file_size": len(data),
            }
        )
    job.images = len(images)
    word = config.nsfw_word.lower()
    nsfw = bool(word) and word in edit.prompt.lower()
    if job.record.endpoint in edit_models.MODELED and job.record.endpoint != DEFAULT_ENDPOINT:
        return edit_models.result_shape(
            job.record.endpoint,
            images,
            seed,
            prompt=edit.prompt,
            nsfw=nsfw,
            inference_s=job.record.service_time,
        )
    return {
        "images": images,
        "timings": {"inference": round(job.record.service_time, 6)},
        "seed": seed,
        "has_nsfw_concepts": [nsfw] * len(images),
        "prompt": edit.prompt,
    }
