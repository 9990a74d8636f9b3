"""Job files: settings with defaults, paths made absolute, errors as `file:line: field: reason`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from batch.job import JobError, JobSpec, RetrySpec, SimSpec, load_job
from batch.schema import DEFAULT_ENDPOINT


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root (the current directory) with jobs/ and manifests/, and the manifests the
    tests name (a job file's manifest must exist)."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "manifests").mkdir()
    (tmp_path / "data").mkdir()
    for name in ("jobs/m.csv", "manifests/catalog.csv", "manifests/demo.csv", "m.csv"):
        (tmp_path / name).write_text("prompt,image_urls\nx,https://img.test/a.png\n")
    (tmp_path / "data" / "m.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def job_file(project: Path, text: str, name: str = "catalog.yaml") -> Path:
    path = project / "jobs" / name
    path.write_text(text, encoding="utf-8")
    return path


def job_errors(path: Path) -> list[str]:
    with pytest.raises(JobError) as caught:
        load_job(path)
    return caught.value.errors


def test_minimal_job_gets_every_default(project: Path) -> None:
    spec = load_job(job_file(project, "manifest: ../manifests/catalog.csv\n"))
    assert spec == JobSpec(
        manifest=project / "manifests" / "catalog.csv",
        name="catalog",
        endpoint=DEFAULT_ENDPOINT,
        queue="https://queue.fal.run",
        concurrency=8,
        rate=None,
        wait="poll",
        retries=RetrySpec(attempts=5, backoff_min=0.5, backoff_max=30.0),
        output=project / "outputs" / "catalog",
        filename="{key}_{index}.{ext}",
        defaults={},
        priority=None,
        start_timeout=None,
        deadline=None,
        sim=SimSpec(capacity=4, latency="uniform:0.2,0.8", seed=0),
    )
    assert not spec.local


def test_full_job(project: Path) -> None:
    text = """name: nightly
manifest: {project}/data/m.jsonl
endpoint: fal-ai/other/edit
queue: local
concurrency: 2
rate: 0.5
wait: stream
retries: {attempts: 3, backoff_min: 0, backoff_max: 2}
output: runs/nightly
filename: "{key}/{index:02d}_{seed}.{ext}"
defaults: {num_images: 2, image_size: 640x480, image_url: https://img.test/a.png}
priority: low
start_timeout: 60
deadline: 600.5
sim: {capacity: 1, latency: "fixed:0.01", seed: 7}
""".replace("{project}", str(project))
    spec = load_job(job_file(project, text))
    assert spec.name == "nightly"
    assert spec.manifest == project / "data" / "m.jsonl"
    assert spec.local
    assert (spec.concurrency, spec.rate, spec.wait) == (2, 0.5, "stream")
    assert spec.retries == RetrySpec(attempts=3, backoff_min=0, backoff_max=2)
    assert spec.output == project / "runs" / "nightly"
    assert spec.defaults == {
        "num_images": 2,
        "image_size": {"width": 640, "height": 480},
        "image_urls": ["https://img.test/a.png"],
    }
    assert (spec.priority, spec.start_timeout, spec.deadline) == ("low", 60, 600.5)
    assert spec.sim == SimSpec(capacity=1, latency="fixed:0.01", seed=7)


def test_output_is_relative_to_the_current_directory_not_the_job_file(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = job_file(project, "manifest: m.csv\noutput: out\n")
    monkeypatch.chdir(project / "manifests")
    spec = load_job(path)
    assert spec.manifest == project / "jobs" / "m.csv"
    assert spec.output == project / "manifests" / "out"


def test_unknown_key_is_reported_with_its_line(project: Path) -> None:
    path = job_file(project, "manifest: m.csv\n\nconcurency: 4\n")
    assert job_errors(path) == ["jobs/catalog.yaml:3: concurency: unknown field"]


def test_all_problems_are_reported_in_line_order(project: Path) -> None:
    text = """manifest: m.csv
concurrency: 0
rate: -1
wait: pigeon
retries:
  attempts: 0
queue: ftp://x
filename: "{key}_{idx}.{ext}"
defaults:
  seed: abc
  colour: red
sim: {latency: soon}
priority: high
"""
    assert job_errors(job_file(project, text)) == [
        "jobs/catalog.yaml:2: concurrency: Input should be greater than or equal to 1",
        "jobs/catalog.yaml:3: rate: Input should be greater than 0",
        "jobs/catalog.yaml:4: wait: Input should be 'poll', 'stream' or 'webhook'",
        "jobs/catalog.yaml:6: retries.attempts: Input should be greater than or equal to 1",
        "jobs/catalog.yaml:7: queue: must be 'local' or an http(s) URL",
        "jobs/catalog.yaml:8: filename: unknown field {idx} (allowed: key, index, ext, seed)",
        "jobs/catalog.yaml:10: defaults.seed: Input should be a valid integer, "
        "unable to parse string as an integer",
        "jobs/catalog.yaml:11: defaults.colour: unknown field",
        "jobs/catalog.yaml:12: sim.latency: "
        "must be fixed:S, uniform:LO,HI, lognormal:MEAN,SIGMA or seconds",
        "jobs/catalog.yaml:13: priority: Input should be 'normal' or 'low'",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "jobs/catalog.yaml:1: manifest: Field required"),
        ("concurrency: 2\n", "jobs/catalog.yaml:1: manifest: Field required"),
        (
            "manifest: m.csv\nrate: [1\n",
            "jobs/catalog.yaml:3: invalid YAML: expected ',' or ']', but got '<stream end>'",
        ),
        ("- manifest: m.csv\n", "jobs/catalog.yaml:1: expected a mapping of settings"),
        ("manifest: m.csv\nrate: 1\nrate: 2\n", "jobs/catalog.yaml:3: rate: duplicate key"),
        (
            "manifest: m.csv\nretries: {backoff_min: 5, backoff_max: 1}\n",
            "jobs/catalog.yaml:2: retries: backoff_max must not be less than backoff_min",
        ),
        (
            "manifest: m.csv\nendpoint: /bad\n",
            "jobs/catalog.yaml:2: endpoint: must look like 'owner/app' or 'owner/app/path'",
        ),
        (
            "manifest: m.csv\nname: a/b\n",
            "jobs/catalog.yaml:2: name: must not contain '/', '\\' or NUL",
        ),
        (
            "manifest: m.csv\nfilename: '{key}.{ext}'\n",
            "jobs/catalog.yaml:2: filename: must contain {key} and {index}",
        ),
        (
            "manifest: m.csv\nfilename: '../{key}_{index}'\n",
            "jobs/catalog.yaml:2: filename: must be a relative name inside the output folder",
        ),
        (
            "manifest: m.csv\nfilename: '{key}_{index'\n",
            "jobs/catalog.yaml:2: filename: "
            "not a valid template (expected '}' before end of string)",
        ),
        (
            "manifest: m.csv\ndefaults:\n  image_url: cat.png\n",
            "jobs/catalog.yaml:3: defaults.image: jobs/cat.png: file not found",
        ),
    ],
)
def test_job_file_problems(project: Path, text: str, error: str) -> None:
    assert job_errors(job_file(project, text)) == [error.replace("{jobs}", str(project / "jobs"))]


def test_missing_job_file(project: Path) -> None:
    assert job_errors(project / "jobs" / "nope.yaml") == ["jobs/nope.yaml: file not found"]


def test_for_manifest_runs_a_manifest_without_a_job_file(project: Path) -> None:
    spec = JobSpec.for_manifest("manifests/demo.csv", concurrency=3, rate=None, queue="local")
    assert spec.name == "demo"
    assert spec.manifest == project / "manifests" / "demo.csv"
    assert spec.output == project / "outputs" / "demo"
    assert (spec.concurrency, spec.rate, spec.queue) == (3, None, "local")


def test_for_manifest_reports_bad_overrides() -> None:
    with pytest.raises(JobError) as caught:
        JobSpec.for_manifest("m.csv", concurrency=0, colour="red")
    assert caught.value.errors == [
        "concurrency: Input should be greater than or equal to 1",
        "colour: unknown field",
    ]


def test_with_overrides_returns_a_validated_copy(project: Path) -> None:
    spec = load_job(job_file(project, "manifest: m.csv\nretries: {attempts: 2}\n"))
    changed = spec.with_overrides(concurrency=16, rate=None, retries={"backoff_max": 5})
    assert (changed.concurrency, changed.rate) == (16, None)
    assert changed.retries == RetrySpec(attempts=2, backoff_min=0.5, backoff_max=5)
    assert (changed.manifest, changed.output) == (spec.manifest, spec.output)
    assert spec.concurrency == 8  # the original is untouched
    assert spec.with_overrides(rate=None) is spec
    with pytest.raises(JobError) as caught:
        spec.with_overrides(concurrency=0)
    assert caught.value.errors == ["concurrency: Input should be greater than or equal to 1"]


def test_with_overrides_merges_defaults_and_moves_default_output(project: Path) -> None:
    spec = JobSpec.for_manifest("m.csv", defaults={"seed": 1})
    changed = spec.with_overrides(defaults={"num_images": 2}, name="other")
    assert changed.defaults == {"seed": 1, "num_images": 2}
    assert changed.output == project / "outputs" / "other"
    kept = JobSpec.for_manifest("m.csv", output="mine").with_overrides(name="other")
    assert kept.output == project / "mine"


def test_spec_is_frozen_and_job_error_is_a_value_error(project: Path) -> None:
    spec = JobSpec.for_manifest("m.csv")
    with pytest.raises(ValidationError):
        spec.concurrency = 3  # type: ignore[misc]
    assert issubclass(JobError, ValueError)


def test_direct_construction_resolves_paths_against_the_current_directory(project: Path) -> None:
    spec = JobSpec(manifest=Path("manifests/x.yaml"))
    assert (spec.manifest, spec.name, spec.output) == (
        project / "manifests" / "x.yaml",
        "x",
        project / "outputs" / "x",
    )
