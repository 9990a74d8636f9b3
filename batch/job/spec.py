"""Job files (``jobs/*.yaml``): the settings of a run, and the manifest they apply to.

```yaml
manifest: ../manifests/catalog.csv   # required; relative to this file's folder
name: catalog                        # default: this file's stem
endpoint: fal-ai/firered-image-edit  # or endpoints: [a, b, …] to compare models on every item
queue: local                         # the embedded simulator, or a URL (https://queue.fal.run)
concurrency: 8                       # requests fal runs at once (your account's limit)
queue_ahead: 8                       # more waiting in fal's queue (default: = concurrency)
rate: 50                             # at most this many submits/s (default: none; 429s slow it)
wait: poll                           # poll | stream | webhook
retries: {attempts: 5, backoff_min: 0.5, backoff_max: 30}
output: outputs/catalog              # default outputs/<name>; relative to the current directory
filename: "{key}_{index}.{ext}"      # fields: key, index, ext, seed
defaults: {num_images: 2}            # input fields under every item (manifest and rows win)
priority: low                        # normal | low | unset
start_timeout: 600                   # seconds an item may stay queued; unset: no limit
deadline: 1800                       # seconds per item, end to end; unset: no limit
sim: {capacity: 4, latency: "uniform:0.2,0.8", seed: 1}   # for queue: local
rest_url: https://rest.fal.ai        # storage API; default: fal's, or a simulator queue's URL
inputs: upload                       # local images: upload | data-uri (small files inline)
upload_concurrency: 4                # uploads in flight
upload_max_age: 24h                  # an upload older than this is done again (seconds or 90m, 2d)
max_image_bytes: 52428800            # local images larger than this are refused (50 MiB)
max_megapixels: 50                   # local images with more pixels are refused
webhook: {public_url: https://hooks.example.com/fal, listen: "127.0.0.1:8787", jwks_url: ...}
fal: {runner_hint: lora-a, no_retry: false, store_io: true, media_expiration: 7d,
      max_queue_length: 100, ca_bundle: /etc/ssl/corp.pem, history_wait: 10m}
price: {per_megapixel: 0.03}         # USD, or {per_image: …}; default: fal's pricing API
budget: {max_usd: 25}                # stop admitting before spend would pass it (needs price)
accounts: [{name: team-a, key_env: FAL_KEY_A, concurrency: 40}]   # sharded runs over accounts
```

Paths are made absolute in one place, `JobSpec._resolve_paths`: ``manifest`` against the job
file's folder (`load_job`) or the current directory, ``output`` against the current directory.
The manifest must exist, and the output folder may not be one whose files a run would destroy
or pollute (`batch.job.paths`). Numbers are finite and bounded. `load_job` raises `JobError`
listing every problem as ``file:line: field: reason``; `JobSpec.for_manifest` and
`JobSpec.with_overrides` list them as ``field: reason``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from batch.fal import DEFAULT_QUEUE_URL
from batch.job.paths import absolute, drop_value, output_problem
from batch.job.settings import (
    _URL_RE,
    ENDPOINT_RE,
    Accounts,
    Endpoints,
    FalSpec,
    JobError,
    RetrySpec,
    SimSpec,
    WebhookSpec,
    _fail,
    duration_setting,
)
from batch.manifest import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MEGAPIXELS,
    NESTED_ERROR,
    BudgetSpec,
    ImageLimits,
    PriceSpec,
    YamlFileError,
    check_fields,
    compose_file,
    construct,
    display_path,
    duplicate_keys,
    find_line,
    format_loc,
    invalid_values,
    line_of,
    validate_id,
    validation_problems,
)
from batch.manifest.localfiles import MAX_MEGAPIXELS_LIMIT, default_files, local_sha
from batch.manifest.pricing import SettingsModel
from batch.outputs import validate_template
from batch.schema import DEFAULT_ENDPOINT

LOCAL_QUEUE = "local"

WaitMode = Literal["poll", "stream", "webhook"]

INT64_MAX = 2**63 - 1
# Ceilings far above any account's limits, so that a typo (concurrency: 80000000) is an error,
# not a run that opens that many connections.
MAX_CONCURRENCY = 10_000
MAX_QUEUE_AHEAD = 100_000
MAX_UPLOAD_CONCURRENCY = 1_000


class JobSpec(SettingsModel):
    """The settings of one run (see the module docstring for each field)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    manifest: Path
    name: str = ""  # set by _resolve_paths (from the manifest's or job file's stem)
    endpoint: str = DEFAULT_ENDPOINT
    endpoints: Endpoints = Field(default_factory=list)  # a comparison
    queue: str = DEFAULT_QUEUE_URL
    concurrency: int = Field(default=8, ge=1, le=MAX_CONCURRENCY)
    # None: as many as `concurrency`
    queue_ahead: int | None = Field(default=None, ge=0, le=MAX_QUEUE_AHEAD)
    rate: float | None = Field(default=None, gt=0)  # None: no ceiling; AIMD on 429s
    wait: WaitMode = "poll"
    retries: RetrySpec = RetrySpec()
    output: Path = Path()  # set by _resolve_paths (outputs/<name>)
    filename: str = "{key}_{index}.{ext}"
    defaults: dict[str, Any] = Field(default_factory=dict)
    priority: Literal["normal", "low"] | None = None
    start_timeout: float | None = Field(default=None, gt=0)
    deadline: float | None = Field(default=None, gt=0)
    sim: SimSpec = SimSpec()
    rest_url: str | None = None  # unset: see `batch.pipeline.uploads.storage_url`
    inputs: Literal["upload", "data-uri"] = "upload"
    upload_concurrency: int = Field(default=4, ge=1, le=MAX_UPLOAD_CONCURRENCY)
    upload_max_age: float = Field(default=24 * 3600.0, gt=0)
    max_image_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1, le=INT64_MAX)
    max_megapixels: float = Field(default=DEFAULT_MAX_MEGAPIXELS, gt=0, le=MAX_MEGAPIXELS_LIMIT)
    webhook: WebhookSpec = WebhookSpec()
    fal: FalSpec = FalSpec()
    price: PriceSpec | None = None
    budget: BudgetSpec | None = None
    accounts: Accounts = Field(default_factory=list)
    shard: str | None = Field(default=None, pattern=r"^[0-9]{1,6}/[0-9]{1,6}$")  # `run --shard`
    store: str | None = None  # the shard's folder in object storage; `output` is then local
    _job_dir: Path | None = PrivateAttr(default=None)  # the job file's folder, if any

    def __eq__(self, other: object) -> bool:
        """Equal settings: where they were read from (``_job_dir``) does not count."""
        if not isinstance(other, JobSpec):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # `defaults` is a dict: never hashable

    @model_validator(mode="before")
    @classmethod
    def _resolve_paths(cls, data: Any, info: ValidationInfo) -> Any:
        """The one place where paths become absolute (see the module docstring).

        The validation context may give ``base_dir``, the folder ``manifest`` is relative to
        (the job file's); without it, the current directory. ``name`` defaults to the
        manifest's stem, ``output`` to ``outputs/<name>``, relative to the current directory.
        """
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        context = info.context if isinstance(info.context, Mapping) else {}
        base_dir = Path(context.get("base_dir") or Path.cwd())
        manifest = absolute(data.get("manifest"), base_dir)
        if manifest is not None:
            data["manifest"] = manifest
            if data.get("name") is None:
                data["name"] = manifest.stem
        output = data.get("output")
        if output is None and isinstance(data.get("name"), str):
            output = Path("outputs") / data["name"]
        output = absolute(output, Path.cwd())
        if output is not None:
            data["output"] = output
        return data

    @model_validator(mode="after")
    def _paths_usable(self, info: ValidationInfo) -> JobSpec:
        """The manifest exists; the output folder is one a run may write (`output_problem`)."""
        context = info.context if isinstance(info.context, Mapping) else {}
        job_dir = context.get("job_dir")
        self._job_dir = Path(job_dir) if job_dir is not None else None
        problems: list[tuple[tuple[str, ...], str]] = []
        if not self.manifest.is_absolute():  # _resolve_paths could not resolve it
            problems.append((("manifest",), "not a usable file path"))
        elif context.get("manifest_must_exist") and not self.manifest.is_file():
            why = "file not found" if not self.manifest.exists() else "not a file"
            problems.append((("manifest",), f"{why}: {display_path(self.manifest)}"))
        if not self.output.is_absolute():
            problems.append((("output",), "not a usable folder path"))
        else:
            unsafe = output_problem(self.output, self._input_folders())
            if unsafe is not None:
                problems.append((("output",), unsafe))
        if problems:
            detail = "; ".join(f"{format_loc(loc)}: {why}" for loc, why in problems)
            raise PydanticCustomError(
                NESTED_ERROR, "{detail}", {"detail": detail, "problems": problems}
            )
        return self

    def _input_folders(self) -> list[tuple[str, Path]]:
        """(what, folder) of the job's local inputs: the output folder may not hold them."""
        folders = [("the manifest's folder", self.manifest.parent)]
        if self._job_dir is not None:
            folders.append(("the job file's folder", self._job_dir.resolve()))
        for ref in self.defaults.get("image_urls") or ():
            sha: str | None = local_sha(ref) if isinstance(ref, str) else None
            file = default_files().lookup(sha) if sha is not None else None
            if file is not None:
                folders.append((f"the folder of {file.file_name}", Path(file.path).parent))
        return folders

    @model_validator(mode="after")
    def _webhook_reachable(self) -> JobSpec:
        """fal must be able to reach the receiver: a public URL, and a port it leads to."""
        if self.wait != "webhook" or self.local:
            return self
        problems: list[tuple[tuple[str, ...], str]] = []
        if self.webhook.public_url is None:
            why = "required with wait: webhook (where fal posts results; see the README)"
            problems.append((("webhook", "public_url"), why))
        if self.webhook.port == 0:
            why = "needs a fixed port with wait: webhook (the public URL must lead to it)"
            problems.append((("webhook", "listen"), why))
        if problems:
            detail = "; ".join(f"{format_loc(loc)}: {why}" for loc, why in problems)
            raise PydanticCustomError(
                NESTED_ERROR, "{detail}", {"detail": detail, "problems": problems}
            )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return validate_id(value)
        except ValueError as exc:
            raise _fail(str(exc)) from None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not ENDPOINT_RE.fullmatch(value):
            raise _fail("must look like 'owner/app' or 'owner/app/path'")
        return value

    @model_validator(mode="after")
    def _first_endpoint(self) -> JobSpec:
        """With `endpoints` (a comparison) `endpoint` is the first: prices, the summary."""
        if self.endpoints:
            self.__dict__["endpoint"] = self.endpoints[0]
        return self

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        if value != LOCAL_QUEUE and not _URL_RE.fullmatch(value):
            raise _fail("must be 'local' or an http(s) URL")
        return value if value == LOCAL_QUEUE else value.rstrip("/")

    @field_validator("rest_url")
    @classmethod
    def _rest_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _URL_RE.fullmatch(value):
            raise _fail("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("upload_max_age", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return duration_setting(value)

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        try:
            validate_template(value)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        return value

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        context = info.context if isinstance(info.context, Mapping) else {}
        base_dir = Path(context.get("base_dir") or Path.cwd())
        values, problems = check_fields(value, base_dir)
        if problems:
            detail = "; ".join(f"{format_loc(loc)}: {why}" for loc, why in problems)
            context = {"detail": detail, "problems": problems}
            raise PydanticCustomError(NESTED_ERROR, "{detail}", context)
        return values

    @property
    def image_limits(self) -> ImageLimits:
        """What a local image may weigh (``max_image_bytes``, ``max_megapixels``)."""
        return ImageLimits(self.max_image_bytes, self.max_megapixels)

    @property
    def local(self) -> bool:
        """True when the run uses the embedded simulator."""
        return self.queue == LOCAL_QUEUE

    @property
    def on_fal(self) -> bool:
        """True when the queue is fal's own (its storage and Platform API are fal's too)."""
        return self.queue == DEFAULT_QUEUE_URL

    @classmethod
    def for_manifest(cls, manifest_path: str | os.PathLike[str], **overrides: Any) -> JobSpec:
        """Settings to run a manifest without a job file: name = the manifest's stem.

        ``overrides`` set fields (None ones are ignored); the manifest path is relative to the
        current directory.
        """
        data = {k: v for k, v in overrides.items() if v is not None}
        context = {"manifest_must_exist": True}
        return _validated({**data, "manifest": manifest_path}, context=context)

    def with_overrides(self, **overrides: Any) -> JobSpec:
        """A validated copy with the non-None ``overrides`` applied (CLI flags).

        A mapping given for ``retries``, ``sim`` or ``defaults`` is merged into the current one.
        If ``name`` changes and ``output`` was the default, ``output`` follows the new name.
        """
        updates = {k: v for k, v in overrides.items() if v is not None}
        if not updates:
            return self
        data = self.model_dump()
        for key, value in updates.items():
            current = data.get(key)
            if isinstance(current, dict) and isinstance(value, Mapping):
                data[key] = {**current, **value}
            else:
                data[key] = value
        default_output = (Path.cwd() / "outputs" / self.name).resolve()
        if "name" in updates and "output" not in updates and self.output == default_output:
            del data["output"]
        return _validated(data, context={"job_dir": self._job_dir})


def _validated(data: Mapping[str, Any], *, context: Mapping[str, Any]) -> JobSpec:
    try:
        return JobSpec.model_validate(data, context=context)
    except ValidationError as exc:
        raise JobError(
            [f"{format_loc(loc)}: {why}" for loc, why in validation_problems(exc)]
        ) from None


def load_job(path: str | os.PathLike[str]) -> JobSpec:
    """Read and validate a job file; every problem is reported as ``file:line: field: reason``."""
    job = Path(path)
    name = display_path(job)
    try:
        root = compose_file(job)
        data = {} if root is None else construct(root)
    except YamlFileError as exc:
        where = name if exc.line is None else f"{name}:{exc.line}"
        raise JobError([f"{where}: {exc.reason}"]) from None
    if root is not None and not isinstance(root, yaml.MappingNode):
        raise JobError([f"{name}:{line_of(root)}: expected a mapping of settings"])
    problems: list[tuple[int, str]] = []
    if isinstance(root, yaml.MappingNode):
        dups = duplicate_keys(root)
        problems = [(line, f"{format_loc(loc)}: duplicate key") for loc, line in dups]
    data = dict(data)
    for loc, why in invalid_values(data):  # a 5000-digit number, .nan: refused at its key
        problems.append((1 if root is None else find_line(root, loc), f"{format_loc(loc)}: {why}"))
        drop_value(data, loc)
    data.setdefault("name", job.stem)
    spec = None
    job_dir = job.resolve().parent
    try:
        context = {"base_dir": job_dir, "job_dir": job_dir, "manifest_must_exist": True}
        spec = JobSpec.model_validate(data, context=context)
    except ValidationError as exc:
        for loc, why in validation_problems(exc):
            line = 1 if root is None else find_line(root, loc)
            problems.append((line, f"{format_loc(loc)}: {why}"))
    if spec is None or problems:
        problems.sort(key=lambda p: p[0])
        raise JobError([f"{name}:{line}: {text}" for line, text in problems])
    return spec
