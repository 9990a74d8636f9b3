"""Manifest changes between runs: finished rows cost nothing, new rows are done, vanished rows
are kept and reported, and a row whose id now names a different request is an error unless
--redo-changed says to do it again."""

from __future__ import annotations

import csv

from batch.ledger import Ledger


def _results(h) -> dict[str, dict[str, str]]:
    with open(h.out / "results.csv", newline="", encoding="utf-8") as fh:
        return {row["key"]: row for row in csv.DictReader(fh)}


async def test_growing_manifest_only_new_rows_are_done(harness):
    h = harness
    h.write_manifest(h.items(5))
    first = await h.run()
    assert first.code == 0, first.err
    old = {r.key: r for r in h.check_all_done()}
    status_calls = {key: h.sim.counters.status_calls_for(r.request_id) for key, r in old.items()}

    # The same command again, nothing new: finished items are skipped with no API call at all.
    talked = h.sim_requests()
    again = await h.run()
    assert again.code == 0, again.err
    assert "0 completed, failed by kind: none" in again.out
    assert h.sim_requests() == talked

    # The manifest grows by 4 rows (as between two cron runs) and loses one.
    grown = [row for row in h.items(9) if row["id"] != "item001"]
    h.write_manifest(grown)
    cron = await h.run()

    assert cron.code == 0, cron.err
    assert "this run: 4 completed" in cron.out
    assert "1 items in the ledger are no longer in the manifest" in cron.out
    assert h.sim.counters.accepted_submits == 9
    # Finished rows were not asked about again, let alone resubmitted.
    assert {
        key: h.sim.counters.status_calls_for(r.request_id) for key, r in old.items()
    } == status_calls
    h.check_all_done([*h.keys, "item001"])
    # The vanished row stays in the ledger, completed, and is reported as such.
    gone = h.row("item001")
    assert gone.state == "completed" and not gone.in_manifest
    results = _results(h)
    assert results["item001"]["in_manifest"] == "false"
    assert results["item001"]["state"] == "completed"
    assert {results[key]["in_manifest"] for key in h.keys} == {"true"}


async def test_edited_row_is_an_error_naming_it_unless_redo_changed(harness):
    h = harness
    rows = h.items(4)
    h.write_manifest(rows)
    first = await h.run()
    assert first.code == 0, first.err
    old = h.row("item002")

    rows[2] = {**rows[2], "prompt": "a different edit entirely"}
    h.write_manifest(rows)
    talked = h.sim_requests()
    refused = await h.run()

    assert refused.code == 2
    # m.csv line 4 is the third data row (line 1 is the header).
    assert "m.csv:4: id: 'item002' names a different request" in refused.err
    assert "--redo-changed" in refused.err
    assert h.sim_requests() == talked
    assert h.row("item002").request_hash == old.request_hash

    redo = await h.run("--redo-changed")

    assert redo.code == 0, redo.err
    assert "this run: 1 completed" in redo.out
    new = h.row("item002")
    assert new.request_hash != old.request_hash
    assert new.payload["prompt"] == "a different edit entirely"
    assert h.submits(new) == 1 and h.submits(old) == 1
    assert h.sim.counters.accepted_submits == 5
    h.check_all_done(extra_submits=1)  # the edited row's first request


async def test_rows_removed_before_they_ran_are_reported_not_waited_for(harness):
    h = harness
    rows = h.items(4)
    h.write_manifest(rows)
    with Ledger.open(h.out):
        pass  # a ledger to plan into: a dry run on a new folder creates nothing
    planned = await h.run("--dry-run")
    assert planned.code == 0 and h.counts()["pending"] == 4

    h.write_manifest(rows[:3])
    done = await h.run()

    # The vanished row stays pending in the ledger, is reported, and is not "left to do":
    # the manifest's work is finished, so the run says 0, not 4 ("resumable") forever.
    assert done.code == 0, done.out
    assert "1 items in the ledger are no longer in the manifest" in done.out
    gone = h.row("item003")
    assert gone.state == "pending" and not gone.in_manifest
    assert h.submits(gone) == 0
    h.check_all_done()
