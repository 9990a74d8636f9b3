"""firered-batch: bulk image edits through fal's queue API, resumable, with a local simulator.

from batch import load_job, run_job, run_job_sync
summary = await run_job(load_job("jobs/demo.yaml"))
"""

from __future__ import annotations

import asyncio
from typing import Any

from batch.job import JobSpec, load_job
from batch.pipeline.run import run_job
from batch.pipeline.summary import RunSummary

__all__ = ["JobSpec", "RunSummary", "load_job", "run_job", "run_job_sync"]


def run_job_sync(spec: JobSpec, **kwargs: Any) -> RunSummary:
    """`run_job` for code without an event loop (scripts); in a notebook, `await run_job`."""
    return asyncio.run(run_job(spec, **kwargs))
