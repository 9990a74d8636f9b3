"""The budget cap: a run stops admitting before spend would pass it, exits 4, and resumes."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from support import TEST_KEY, item_rows

from batch.errors import ExitCode
from batch.ledger import Ledger
from batch.outputs.naming import verify_outputs

# Prices under which every item of `item_rows` costs $0.01.
PRICES = [
    pytest.param({"per_image": 0.01}, id="per_image"),
    # outputs take the inline input's size, 16×12 = 192 px; 0.01 / 192e-6 $/MP = $0.01 each
    pytest.param({"per_megapixel": 0.01 / 192e-6}, id="per_megapixel_from_input_size"),
]


def _check_consistent(out, total: int) -> dict[str, int]:
    with Ledger.open(out) as ledger:
        counts = ledger.counts()
        assert counts["submitted"] == 0 and sum(counts.values()) == total
        for row in ledger.iter_work():
            assert row.state == "pending" and row.request_id is None
            assert row.submit_started_at is None and not row.possible_duplicate
        done = [
            k for k in (f"item{i:03d}" for i in range(total)) if ledger.get(k).state == "completed"
        ]
        records = [r for k in done for r in ledger.outputs(k)]
        assert len(records) == len(done) and verify_outputs(out, records) == []
    return counts


@pytest.mark.parametrize("price", PRICES)
async def test_budget_stops_admitting_exits_4_and_a_higher_budget_resumes(make_runner, price):
    """10 items at $0.01 under a $0.05 cap with 8 slots: 5 are sent — the in-flight ones
    count — the run exits 4 saying the budget stopped it; nothing is lost or sent twice, and
    a run with a raised cap finishes the rest."""
    runner = await make_runner(latency="fixed:0.2")  # several requests in flight at once
    runner.write(item_rows(10))

    first = await runner.run(runner.spec(price=price, budget={"max_usd": 0.05}))

    assert first.exit_code == ExitCode.STOPPED
    assert first.message.startswith("stopped by the budget: $0.05 spent or in flight")
    assert "raise budget.max_usd to continue" in first.message
    assert runner.sim.counters.accepted_submits == 5
    assert _check_consistent(runner.out, 10) == {
        "completed": 5,
        "pending": 5,
        "submitted": 0,
        "failed": 0,
    }
    assert "  spent: $0.05 (estimate at" in first.text() and "; budget $0.05" in first.text()
    assert (runner.out / "report.html").is_file()

    again = await runner.run(runner.spec(price=price, budget={"max_usd": 0.05}))
    assert again.exit_code == ExitCode.STOPPED and runner.sim.counters.accepted_submits == 5

    raised = await runner.run(runner.spec(price=price, budget={"max_usd": 0.2}))

    assert raised.exit_code == ExitCode.OK, raised.text()
    assert _check_consistent(runner.out, 10)["completed"] == 10
    assert runner.sim.counters.accepted_submits == 10
    assert runner.sim.counters.duplicate_submits() == {}


async def test_unknown_output_sizes_are_held_at_a_megapixel(make_runner):
    """Outputs at a remote input's size are unknown before the run: each is held at 1 MP
    (or the largest output seen), so a cap below that sends nothing."""
    runner = await make_runner()
    runner.write([{"id": "r", "prompt": "x", "image_urls": ["https://example.com/big.png"]}])
    summary = await runner.run(runner.spec(price={"per_megapixel": 1.0}, budget={"max_usd": 0.5}))
    assert summary.exit_code == ExitCode.STOPPED
    assert "the next item (r) would cost $1.00" in summary.message
    assert runner.sim.counters.accepted_submits == 0


async def test_budget_stop_from_the_command_line(make_runner, tmp_path):
    """`firered-batch run` exits 4 and says the budget stopped it; `status` shows the spend."""
    runner = await make_runner()
    runner.write(item_rows(4, image_size="square"))  # 0.262144 MP each
    job = tmp_path / "job.yaml"
    job.write_text(
        f"manifest: m.csv\nqueue: {runner.sim.url}\noutput: {runner.out}\n"
        "price: {per_megapixel: 1}\nbudget: {max_usd: 0.6}\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    env["FAL_KEY"] = TEST_KEY
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batch", "run", str(job), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=50)
    assert proc.returncode == 4, err.decode()
    text = out.decode()
    assert "stopped by the budget: $0.52 spent or in flight of max_usd $0.60" in text
    assert "2 completed, 0 failed, 2 pending" in text, text
    assert runner.sim.counters.accepted_submits == 2
