"""The README's examples run as written, in order, in a copy of the project after `make demo`
(the way sqlite-utils and cog keep docs true).

Every ```sh and ```python block is run, unless the line before it says why it cannot be here
(`<!-- not run: ... -->`: it needs fal itself, a public URL, or is this test suite). In a ```sh
block with `$ ` prompts only the prompt lines are commands (the rest is sample output); a
command that starts a server (`firered-batch sim`, `webhook serve`) is started, must come up,
and is stopped. Each block must exit 0 unless its line says `# exit N`. Output is not compared
(paths and times differ); `tests/` checks what commands print.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVERS = ("firered-batch sim", "firered-batch webhook serve")
STEP_TIMEOUT_S = 120
SKIP = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
EXIT = re.compile(r"#\s*exit (\d+)\s*$")


@dataclass
class Block:
    line: int
    lang: str
    code: str
    skip: str | None  # why it is not run


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, lang = i, fence.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = [ln for ln in lines[max(0, start - 3) : start] if ln.strip()]
        reason = next((m.group(1) for ln in before if (m := SKIP.search(ln))), None)
        found.append(Block(start + 1, lang, "\n".join(lines[start + 1 : end]), reason))
        i = end + 1
    return found


def commands(block: Block) -> list[str]:
    """The block's commands: its `$ ` lines when it has any, else every line; a line ending
    in a backslash continues on the next."""
    raw = block.code.splitlines()
    if any(line.startswith("$ ") for line in raw):
        raw = [line[2:] for line in raw if line.startswith("$ ")]
    out: list[str] = []
    for line in raw:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1] + line
        elif line.strip() and not line.lstrip().startswith("#"):
            out.append(line)
    return out


README_BLOCKS = blocks((ROOT / "README.md").read_text(encoding="utf-8"))
RUN = [b for b in README_BLOCKS if b.lang in ("sh", "python") and b.skip is None]


def test_every_example_is_run_or_says_why_not() -> None:
    examples = [b for b in README_BLOCKS if b.lang in ("sh", "python")]
    assert len(RUN) >= 10, f"{len(RUN)} examples run"
    for block in examples:
        assert block.skip is None or len(block.skip) > 10, f"README.md:{block.line}"


def _wait_port(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project's jobs and manifests, where `make demo` has run."""
    here = tmp_path_factory.mktemp("readme")
    for name in ("jobs", "manifests"):
        shutil.copytree(ROOT / name, here / name)
    demo = subprocess.run(
        [str(BIN / "firered-batch"), "run", "jobs/demo.yaml"],
        cwd=here,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )
    assert demo.returncode == 0, demo.stderr
    return here


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.timeout(900)
def test_the_readme_examples_run_in_order(project: Path) -> None:
    env = _env()
    servers: list[subprocess.Popen[str]] = []
    ran = 0
    try:
        for block in RUN:
            where = f"README.md:{block.line}"
            if block.lang == "python":
                result = subprocess.run(
                    [sys.executable, "-c", block.code],
                    cwd=project,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=STEP_TIMEOUT_S,
                )
                assert result.returncode == 0, f"{where}\n{result.stdout}\n{result.stderr}"
                ran += 1
                continue
            for command in commands(block):
                expect = int(m.group(1)) if (m := EXIT.search(command)) else 0
                if command.startswith(SERVERS):
                    port = int(re.search(r"--(?:port|webhook-listen \S+:)\s*(\d+)", command)[1])
                    proc = subprocess.Popen(
                        ["bash", "-c", command],
                        cwd=project,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        start_new_session=True,
                    )
                    servers.append(proc)
                    _wait_port(port, proc)
                    ran += 1
                    continue
                result = subprocess.run(
                    ["bash", "-c", command],
                    cwd=project,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=STEP_TIMEOUT_S,
                )
                assert result.returncode == expect, (
                    f"{where}: {command}\nexit {result.returncode}\n{result.stdout}\n"
                    f"{result.stderr}"
                )
                assert "Traceback" not in result.stderr, f"{where}: {command}\n{result.stderr}"
                ran += 1
    finally:
        for proc in servers:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=30)
    print(f"{ran} README commands and snippets ran")
    assert ran >= 15
