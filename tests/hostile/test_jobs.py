"""Hostile job files: refused with exit 2, ``jobs/x.yaml:line: field: reason``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

BIG = "1" * 5000

# (id, the job file after its first line `manifest: ../manifests/m.csv`, the message line)
CASES: list[tuple[str, str, str]] = [
    ("output-root", "output: /\n", r"jobs/x\.yaml:2: output: / is the root folder"),
    ("output-is-the-manifests-folder", "output: manifests\n",
     r"jobs/x\.yaml:2: output: manifests is the manifest's folder \(the run writes results"),
    ("output-contains-the-manifests-folder", "output: .\n",
     r"jobs/x\.yaml:2: output: \. contains the manifest's folder, manifests"),
    ("output-is-the-job-files-folder", "output: jobs\n",
     r"jobs/x\.yaml:2: output: jobs is the job file's folder"),
    ("output-is-home", "output: '~'\n", r"jobs/x\.yaml:2: output: home is your home folder"),
    ("output-in-etc", "output: /etc/firered\n",
     r"jobs/x\.yaml:2: output: /etc/firered is inside /etc, a system folder"),
    ("output-in-proc", "output: /proc/sys/x\n",
     r"jobs/x\.yaml:2: output: /proc/sys/x is inside /proc, a system folder"),
    ("output-usr", "output: /usr\n", r"jobs/x\.yaml:2: output: /usr is a system folder"),
    ("output-is-a-file", "output: manifests/m.csv\n",
     r"jobs/x\.yaml:2: output: manifests/m\.csv is a file, not a folder"),
    ("output-with-nul", 'output: "a\\0b"\n',
     r"jobs/x\.yaml:2: output: a control character \(U\+0000\) at character 2 is not allowed"),
    ("runner-hint-header-injection", 'fal: {runner_hint: "a\\r\\nX-Evil: 1"}\n',
     r"jobs/x\.yaml:2: fal\.runner_hint: a control character \(U\+000D\)"),
    ("concurrency-too-large", "concurrency: 80000000\n",
     r"jobs/x\.yaml:2: concurrency: Input should be less than or equal to 10000"),
    ("concurrency-true", "concurrency: true\n",
     r"jobs/x\.yaml:2: concurrency: Input should be a number, not true or false"),
    ("concurrency-5000-digits", f"concurrency: {BIG}\n",
     r"jobs/x\.yaml:2: concurrency: number too large \(5000 digits\)"),
    ("rate-infinite", "rate: .inf\n", r"jobs/x\.yaml:2: rate: Input should be a finite number"),
    ("media-expiration-nan", "fal: {media_expiration: .nan}\n",
     r"jobs/x\.yaml:2: fal\.media_expiration: Input should be a finite number"),
    ("sim-seed-2**64", f"sim: {{seed: {2**64}}}\n",
     r"jobs/x\.yaml:2: sim\.seed: Input should be less than or equal to 9223372036854775807"),
    ("retries-attempts-negative", "retries: {attempts: -3}\n",
     r"jobs/x\.yaml:2: retries\.attempts: Input should be greater than or equal to 1"),
    ("duplicate-nested-key", "retries:\n  attempts: 2\n  attempts: 3\n",
     r"jobs/x\.yaml:4: retries\.attempts: duplicate key"),
    ("nested-100000-deep", "defaults: " + "[" * 100_000 + "\n",
     r"jobs/x\.yaml:2: invalid YAML: nested deeper than 10 levels"),
    ("defaults-seed-2**63", f"defaults: {{seed: {2**63}}}\n",
     r"jobs/x\.yaml:2: defaults\.seed: Input should be less than or equal to 9223372036854775807"),
    ("defaults-prompt-with-nul", 'defaults: {prompt: "a\\0"}\n',
     r"jobs/x\.yaml:2: defaults\.prompt: a control character \(U\+0000\)"),
    ("max-megapixels-1000", "max_megapixels: 1000\n",
     r"jobs/x\.yaml:2: max_megapixels: Input should be less than or equal to 200"),
    ("price-negative", "price: {per_image: -1}\n",
     r"jobs/x\.yaml:2: price\.per_image: Input should be greater than or equal to 0"),
    ("unknown-setting", "concurency: 4\n", r"jobs/x\.yaml:2: concurency: unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_job_file(check: Callable[..., None], project: Path, text: str, line: str) -> None:
    (project / "manifests").mkdir()
    (project / "manifests" / "m.csv").write_text("prompt,image_urls\nx,https://img.test/a.png\n")
    (project / "jobs").mkdir()
    (project / "jobs" / "x.yaml").write_text("manifest: ../manifests/m.csv\n" + text)
    check("jobs/x.yaml", line)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("manifest: ../manifests/gone.csv\n",
         r"jobs/x\.yaml:1: manifest: file not found: manifests/gone\.csv"),
        ("manifest: ../manifests\n", r"jobs/x\.yaml:1: manifest: not a file: manifests"),
        ("", r"jobs/x\.yaml:1: manifest: Field required"),
        ("- manifest: m.csv\n", r"jobs/x\.yaml:1: expected a mapping of settings"),
        ("manifest: [\n", r"jobs/x\.yaml:2: invalid YAML: expected the node content"),
    ],
    ids=["manifest-missing", "manifest-is-a-folder", "empty-file", "a-list", "broken-yaml"],
)  # fmt: skip
def test_hostile_job_file_manifest(
    check: Callable[..., None], project: Path, text: str, line: str
) -> None:
    (project / "manifests").mkdir()
    (project / "jobs").mkdir()
    (project / "jobs" / "x.yaml").write_text(text)
    check("jobs/x.yaml", line)
