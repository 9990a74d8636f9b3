"""Small things of the command line a newcomer meets first: -h, option help, --kind checked,
a busy port, a file that is neither a manifest nor a job file, `webhook serve --queue-url`."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import click
from click.testing import CliRunner
from support import TEST_KEY, free_port, item_rows, run_cli, write_csv

from batch.cli import main
from batch.cli.ledger_commands import ERROR_KINDS
from batch.errors import ExitCode
from batch.fal.errors import _KINDS as FAL_KINDS
from batch.ledger import Ledger
from batch.sim import FaultPlan, FaultRule, Simulator

BATCH = Path(__file__).resolve().parents[1] / "batch"


def _commands(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command and group under `command` (itself first), with the words that name it."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, (*path, name))


def test_dash_h_is_help_on_the_group_and_every_command():
    runner = CliRunner()
    named = [path for path, _ in _commands(main)]
    assert ("webhook", "serve") in named and ("sim",) in named
    for path in named:
        short = runner.invoke(main, [*path, "-h"])
        assert short.exit_code == 0, (path, short.output)
        assert short.output == runner.invoke(main, [*path, "--help"]).output, path
        assert short.output.startswith("Usage: ") and "-h, --help" in short.output, path


def test_every_option_of_every_command_has_help():
    missing = [
        f"{' '.join(path) or 'firered-batch'} {param.opts[0]}"
        for path, command in _commands(main)
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert missing == []


def _local_run(tmp_path: Path, manifest: Path) -> click.testing.Result:
    args = ["run", str(manifest), "--queue-url", "local", "--output", str(tmp_path / "out")]
    return CliRunner().invoke(main, args, env={"FAL_KEY": TEST_KEY})


def test_retry_refuses_an_unknown_kind_and_names_the_valid_ones(tmp_path):
    manifest = tmp_path / "m.jsonl"  # one item whose input is not an image: it fails
    manifest.write_text(
        '{"prompt": "p", "image_urls": ["data:image/png;base64,AAAA"]}\n', encoding="utf-8"
    )
    assert _local_run(tmp_path, manifest).exit_code == ExitCode.FAILED
    out = str(tmp_path / "out")
    with Ledger.open(out) as ledger:
        (failed,) = ledger.failures()
    runner = CliRunner()

    bogus = runner.invoke(main, ["retry", out, "--kind", "bogus"])
    assert bogus.exit_code == ExitCode.INVALID, bogus.output
    assert "'bogus' is not an error kind; one of: " in bogus.stderr
    assert all(kind in bogus.stderr for kind in ("transient", "permanent", "download"))
    assert f"failed now: {failed.kind} 1" in bogus.stderr

    other = next(kind for kind in ("stuck", "lost") if kind != failed.kind)
    none = runner.invoke(main, ["retry", out, "--kind", other])
    assert none.exit_code == 0, none.output
    assert none.stdout == f"0 failed ({other}) items will be tried again by the next run\n"
    assert none.stderr == f"no failed items of kind {other}; failed now: {failed.kind} 1\n"

    again = runner.invoke(main, ["retry", out, "--kind", failed.kind])
    assert again.exit_code == 0 and again.stdout.startswith(f"1 failed ({failed.kind}) items")


def test_the_error_kinds_retry_accepts_are_those_the_package_records():
    """`--kind` is checked against ERROR_KINDS: a kind the pipeline, the ledger or fal's
    errors record must be in it (and nothing else)."""
    patterns = [
        r'\b(?:fail|record_failure|mark_failed|mark_retry)\([^()]*?"([a-z_]+)"',
        r'\bkind="([a-z_]+)"',
        r"error_kind = '([a-z_]+)'",
    ]
    found = set(FAL_KINDS.values())
    for folder in ("pipeline", "ledger"):
        for source in (BATCH / folder).rglob("*.py"):
            text = source.read_text(encoding="utf-8")
            for pattern in patterns:
                found.update(re.findall(pattern, text))
    assert {"stuck", "exhausted", "download", "lost", "expired", "transient"} <= found
    assert sorted(found) == sorted(ERROR_KINDS)


def test_sim_on_a_port_in_use_is_one_line_and_exit_2():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["sim", "--port", str(port), "--key", "k"])
    assert result.exit_code == ExitCode.INVALID, result.output
    assert result.stderr == f"port {port} is in use; choose another with --port\n"
    assert "crashed" not in result.output


def test_a_file_neither_manifest_nor_job_file_says_what_is_accepted(tmp_path):
    text = tmp_path / "m.txt"
    text.write_text("a photo of a cat\n", encoding="utf-8")
    runner = CliRunner()
    for command in ("validate", "run", "status"):
        result = runner.invoke(main, [command, str(text)], env={"FAL_KEY": TEST_KEY})
        assert result.exit_code == ExitCode.INVALID, (command, result.output)
        assert "expected a mapping" not in result.stderr
        assert result.stderr == (
            f"{text}: not a manifest (.csv, .jsonl, or .yaml/.yml with items: or matrix:)"
            " nor a job file (.yaml/.yml with manifest:)\n"
        )


async def test_webhook_serve_takes_a_manifest_and_its_queue_url(tmp_path):
    """As the README's detached example, with a manifest: `webhook serve` fetches from the
    queue it is given (each delivery here lacks its payload, so every result is fetched)."""
    manifest = tmp_path / "m.csv"
    write_csv(manifest, item_rows(3))
    out = tmp_path / "out"
    port = free_port()
    faults = FaultPlan(rules=[FaultRule(kind="webhook_payload_error")])
    sim = Simulator(key=TEST_KEY, latency="fixed:0.01", webhook_retry_scale=0.001, faults=faults)
    async with sim:
        hook = ["--webhook-url", f"http://127.0.0.1:{port}/fal"]
        hook += ["--webhook-listen", str(port), "--jwks-url", sim.jwks_url]
        common = [str(manifest), "--queue-url", sim.url, "--output", str(out), *hook]
        code, stdout, stderr = await run_cli("run", *common, "--detach")
        assert code == ExitCode.OK, stdout + stderr
        code, stdout, stderr = await run_cli("webhook", "serve", *common, "--until-done")
        assert code == ExitCode.OK, stdout + stderr
        assert "3 completed" in stdout
        assert sim.counters.requests_for("result") >= 3
    with Ledger.open(out) as ledger:
        assert ledger.counts()["completed"] == 3

    code, _, stderr = await run_cli(
        "webhook", "serve", str(manifest), "--queue-url", "local", "--output", str(out)
    )
    assert code == ExitCode.INVALID and "needs a remote queue" in stderr


def test_the_license_is_an_spdx_string_the_build_backend_understands():
    """PEP 639: `license = "MIT"` (a table is deprecated), which needs setuptools >= 77."""
    import tomllib

    project = tomllib.loads((BATCH.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "MIT"
    assert "setuptools>=77" in project["build-system"]["requires"]
