"""Pilot runs (`run --sample N`) and model comparison (`endpoints:`), against the simulator."""

from __future__ import annotations

import pytest
from support import item_rows, png_uri, write_csv

from batch.errors import ExitCode
from batch.fal.adapters import adapt
from batch.ledger import Ledger
from batch.manifest import ManifestError

QWEN = "fal-ai/qwen-image-edit"
KONTEXT = "fal-ai/flux-kontext/dev"
FIRERED = "fal-ai/firered-image-edit"


def _pilot(out) -> set[str]:
    with Ledger.open(out) as ledger:
        return {k for (k,) in ledger._conn.execute("SELECT key FROM items WHERE pilot = 1")}


async def test_a_pilot_is_a_stable_sample_and_the_full_run_skips_what_it_did(runner):
    rows = item_rows(30)
    sim = await runner.start()
    manifest = runner.tmp / "m.csv"
    write_csv(manifest, rows)
    spec = runner.spec(manifest)
    pilot = await runner.run(spec, sample=(6, 7))
    assert pilot.exit_code == ExitCode.OK, pilot.text()
    assert pilot.counts["completed"] == 6 and pilot.counts["pending"] == 24
    chosen = _pilot(spec.output)
    assert len(chosen) == 6

    again = await runner.run(spec, sample=(6, 7))  # the same pilot again: nothing to do
    assert again.counts["completed"] == 6 and sim.counters.accepted_submits == 6

    # The same sample from a reordered manifest into another folder; another seed differs.
    write_csv(runner.tmp / "r.csv", list(reversed(rows)))
    other = runner.spec(runner.tmp / "r.csv", output=runner.tmp / "out2")
    await runner.run(other, sample=(6, 7))
    assert _pilot(other.output) == chosen
    third = runner.spec(manifest, output=runner.tmp / "out3")
    await runner.run(third, sample=(6, 8))
    assert _pilot(third.output) != chosen

    accepted = sim.counters.accepted_submits
    full = await runner.run(spec)
    assert full.exit_code == ExitCode.OK and full.counts["completed"] == 30
    assert sim.counters.accepted_submits - accepted == 24  # the pilot's 6 were not sent again


async def test_a_comparison_runs_every_item_on_every_endpoint_in_its_own_fields(runner):
    sim = await runner.start()
    manifest = runner.manifest(4)
    spec = runner.spec(manifest, endpoints=[FIRERED, QWEN, KONTEXT])
    summary = await runner.run(spec)
    assert summary.exit_code == ExitCode.OK, summary.text()
    assert summary.counts["completed"] == 12
    with Ledger.open(spec.output) as ledger:
        keys = [k for (k,) in ledger._conn.execute("SELECT key FROM items ORDER BY key")]
        item = ledger.get("item000@qwen-image-edit")
    assert keys[:3] == [
        "item000@firered-image-edit",
        "item000@flux-kontext-dev",
        "item000@qwen-image-edit",
    ]
    assert len(keys) == 12
    assert item is not None and item.endpoint == QWEN
    sent = adapt(QWEN, item.payload)
    assert "image_url" in sent and "image_urls" not in sent
    assert sim.counters.submits_for(QWEN, sent) == 1  # fal got the model's own fields
    # a pilot of a comparison samples inputs: each with all its endpoints
    pilot = runner.spec(manifest, endpoints=[FIRERED, QWEN], output=runner.tmp / "p")
    await runner.run(pilot, sample=(2, 1))
    chosen = _pilot(pilot.output)
    assert len(chosen) == 4 and len({k.split("@")[0] for k in chosen}) == 2


async def test_an_item_an_endpoint_cannot_take_stops_the_plan_with_its_line(runner):
    sim = await runner.start()
    manifest = runner.tmp / "m.csv"
    two = f"{png_uri()}|{png_uri(color=(200, 10, 10))}"
    write_csv(manifest, [*item_rows(2), {"id": "pair", "prompt": "merge", "image_urls": two}])
    spec = runner.spec(manifest, endpoints=[FIRERED, QWEN])
    with pytest.raises(ManifestError) as caught:
        await runner.run(spec)
    assert "m.csv:4" in str(caught.value) and QWEN in str(caught.value)
    assert sim.counters.accepted_submits == 0


async def test_endpoints_whose_items_would_share_keys_are_refused(runner):
    from batch.job import JobError

    await runner.start()
    spec = runner.spec(
        runner.manifest(2), endpoints=["fal-ai/nano-banana/edit", "acme/nano-banana/edit"]
    )
    with pytest.raises(JobError, match="would both key their items"):
        await runner.run(spec)


async def test_one_adapted_endpoint_checks_every_item_before_sending(runner):
    sim = await runner.start()
    manifest = runner.tmp / "m.csv"
    two = f"{png_uri()}|{png_uri(color=(200, 10, 10))}"
    write_csv(manifest, [*item_rows(2), {"id": "pair", "prompt": "merge", "image_urls": two}])
    with pytest.raises(ManifestError, match=r"m\.csv:4"):
        await runner.run(runner.spec(manifest, endpoint=QWEN))
    assert sim.counters.accepted_submits == 0


async def test_a_dry_run_of_a_pilot_counts_only_its_sample(runner):
    await runner.start()
    spec = runner.spec(runner.manifest(20))
    summary = await runner.run(spec, dry_run=True, sample=(3, 1))
    assert any("to send: 3 requests" in line for line in summary.cost), summary.cost
