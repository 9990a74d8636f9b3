"""A job: the settings of a run (``jobs/*.yaml``) and the manifest they apply to.

    spec.py      JobSpec and load_job: validated settings with absolute paths
    settings.py  the nested settings (retries, simulator, webhooks), durations, JobError

It sits above the manifest, the outputs and fal's protocol (it checks settings with their
rules) and below the ledger's users: the pipeline, the report and the CLI.
"""

from batch.job.settings import (
    DEFAULT_PLATFORM_URL,
    FalSpec,
    JobError,
    RetrySpec,
    SimSpec,
    WebhookSpec,
    parse_duration,
)
from batch.job.spec import LOCAL_QUEUE, JobSpec, WaitMode, load_job

__all__ = [
    "DEFAULT_PLATFORM_URL",
    "LOCAL_QUEUE",
    "FalSpec",
    "JobError",
    "JobSpec",
    "RetrySpec",
    "SimSpec",
    "WaitMode",
    "WebhookSpec",
    "load_job",
    "parse_duration",
]
