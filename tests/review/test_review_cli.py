"""`firered-batch review`: its help, its refusals, and a real server that Ctrl-C stops.

The command is registered in `batch.cli.commands.main` by the CLI's owner; these tests add it
to the group for their own duration (and, in the subprocess, before calling `main`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from yarl import URL

from batch.cli.commands import main
from batch.cli.review_command import review

SERVE = (
    "from batch.cli.commands import main; from batch.cli.review_command import review;"
    " main.add_command(review); main()"
)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setitem(main.commands, "review", review)
    return CliRunner()


def test_help_has_an_example(cli):
    done = cli.invoke(main, ["review", "--help"])
    assert done.exit_code == 0
    assert "Example: firered-batch review" in done.output and "--allow-remote" in done.output


def test_a_host_others_can_reach_is_refused_without_allow_remote(cli, outputs):
    done = cli.invoke(main, ["review", str(outputs({"a": 1})), "--host", "0.0.0.0"])
    assert done.exit_code == 2 and "--allow-remote" in done.output


def test_a_reviewer_name_that_cannot_be_stored_is_refused(cli, outputs):
    done = cli.invoke(main, ["review", str(outputs({"a": 1})), "--reviewer", " "])
    assert done.exit_code == 2 and "--reviewer" in done.output


def test_a_folder_without_a_ledger_is_refused(cli, tmp_path):
    done = cli.invoke(main, ["review", str(tmp_path)])
    assert done.exit_code == 2 and "ledger" in done.output


async def test_the_command_serves_until_ctrl_c_and_writes_the_report(outputs, tmp_path: Path):
    """The printed URL opens the page; a decision through it lands in the ledger; Ctrl-C ends
    the command with exit 0 and report.html shows the decision."""
    out = outputs({"a": 1, "b": 1})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVE,
        "review",
        str(out),
        "--reviewer",
        "dana",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith(f"Reviewing {out} as dana: open http://127.0.0.1:"), line
        url = URL(line.rsplit(" ", 1)[1].strip())
        assert len(url.query["token"]) >= 24
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            async with session.get(url) as page:
                assert page.status == 200 and '"reviewer": "dana"' in await page.text()
            base = url.with_query(None)
            headers = {"Origin": f"http://{base.host}:{base.port}", "X-Firered-Review": "1"}
            payload = {"k": "b", "i": 0, "action": "approve", "v": 0}
            async with session.post(base / "api/decisions", json=payload, headers=headers) as r:
                assert r.status == 200 and (await r.json())["decision"]["by"] == "dana"
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
        assert code == 0, (await proc.stderr.read()).decode() if proc.stderr else code
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    page = (out / "report.html").read_text(encoding="utf-8")
    data = json.loads(page.split('id="report-data">', 1)[1].split("</script>", 1)[0])
    assert [r["rv"][0]["by"] for r in data if "rv" in r] == ["dana"]
