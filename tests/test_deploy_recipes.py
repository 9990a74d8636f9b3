"""The deployment recipes in deploy/ parse, and say what the code means (exit codes, shards)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from batch.errors import ExitCode
from batch.job.shards import K8S_INDEX, OUR_COUNT

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SCRIPTS = [
    DEPLOY / "slurm" / "array.sbatch",
    DEPLOY / "slurm" / "merge.sbatch",
    DEPLOY / "parallel.sh",
]


def _documents(name: str) -> list[dict[str, Any]]:
    with (DEPLOY / "kubernetes" / name).open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def _shard_job() -> dict[str, Any]:
    jobs = [d for d in _documents("indexed-job.yaml") if d["kind"] == "Job"]
    (job,) = [j for j in jobs if j["spec"].get("completionMode") == "Indexed"]
    return job


def _rules(action: str) -> list[dict[str, Any]]:
    rules = _shard_job()["spec"]["podFailurePolicy"]["rules"]
    return [r for r in rules if r["action"] == action]


def _codes(action: str) -> set[int]:
    return {code for rule in _rules(action) for code in rule["onExitCodes"]["values"]}


def test_indexed_job_fields() -> None:
    spec = _shard_job()["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    assert spec["backoffLimitPerIndex"] == 3
    assert 1 <= spec["maxFailedIndexes"] <= spec["completions"]
    assert spec["podReplacementPolicy"] == "Failed"
    assert "backoffLimit" not in spec  # with backoffLimitPerIndex, the per-index limit rules
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by backoffLimitPerIndex


def test_pod_failure_policy_uses_our_exit_codes() -> None:
    assert _codes("FailJob") == {
        ExitCode.INVALID,
        ExitCode.AUTH,
        ExitCode.ACCOUNT_LOCKED,
        ExitCode.TLS,
    }
    assert _codes("FailIndex") == {ExitCode.FAILED}
    assert _codes("Count") == {ExitCode.STOPPED, ExitCode.LOCKED, ExitCode.CRASH}
    (ignore,) = _rules("Ignore")
    assert ignore["onPodConditions"] == [{"type": "DisruptionTarget"}]
    rules = _shard_job()["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] is not None and rules[0]["action"] == "Ignore"  # first: a rule's order counts
    container = _shard_job()["spec"]["template"]["spec"]["containers"][0]["name"]
    for rule in rules:
        if "onExitCodes" in rule:
            values = rule["onExitCodes"]["values"]
            assert rule["onExitCodes"]["operator"] == "In"
            assert rule["onExitCodes"]["containerName"] == container
            assert values == sorted(set(values)) and 0 not in values  # what the API demands


def test_shard_pods_get_key_count_and_command() -> None:
    pod = _shard_job()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FAL_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "firered-fal", "key": "FAL_KEY"}
    assert "value" not in env["FAL_KEY"]
    assert env[OUR_COUNT]["value"] == str(_shard_job()["spec"]["completions"])
    assert K8S_INDEX not in env  # Kubernetes sets it
    command = container["command"]
    assert command[:3] == ["firered-batch", "run", "/job/job.yaml"]
    assert command[command.index("--shard") + 1] == "auto"
    work = command[command.index("--work-dir") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["work"] == work and "emptyDir" in volumes["work"]
    config = volumes["job-files"]["configMap"]["name"]
    (config_map,) = [d for d in _documents("indexed-job.yaml") if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"] == config
    assert "job.yaml" in config_map["data"]
    job_file = yaml.safe_load(config_map["data"]["job.yaml"])
    assert job_file["manifest"] in config_map["data"]


def test_merge_job_waits_suspended() -> None:
    (merge,) = [
        d
        for d in _documents("indexed-job.yaml")
        if d["kind"] == "Job" and "completionMode" not in d["spec"]
    ]
    assert merge["spec"]["suspend"] is True
    command = merge["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["firered-batch", "merge"]
    run = _shard_job()["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[2] == run[run.index("--output") + 1]


def test_secret_example_matches_the_reference() -> None:
    (secret,) = _documents("secret.example.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "firered-fal"
    assert "FAL_KEY" in secret["stringData"]


def test_slurm_array_is_a_plain_range_with_requeue_and_max_runtime() -> None:
    text = (DEPLOY / "slurm" / "array.sbatch").read_text()
    directives = re.findall(r"^#SBATCH (\S+)", text, re.MULTILINE)
    arrays = [d for d in directives if d.startswith("--array=")]
    assert arrays == ["--array=0-3"]
    assert "--requeue" in directives
    assert any(d.startswith("--time=") for d in directives)
    assert "--shard auto" in text and "--max-runtime" in text


def test_slurm_merge_explains_its_dependency() -> None:
    text = (DEPLOY / "slurm" / "merge.sbatch").read_text()
    assert "--dependency=afterany:" in text
    assert "firered-batch merge" in text


def test_parallel_runs_each_shard_then_merges() -> None:
    text = (DEPLOY / "parallel.sh").read_text()
    assert "--shard {}/" in text and ":::" in text
    assert text.index("parallel --jobs") < text.index("firered-batch merge")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert script.read_text().startswith("#!")
