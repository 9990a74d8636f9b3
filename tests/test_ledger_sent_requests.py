"""What the ledger keeps so that a lost submit can be found in fal's history (m007): what a
submit on its way carries, every request id fal gave, and which items were recovered."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from support import ENDPOINT, PlanItem

from batch.ledger import Ledger
from batch.ledger import migrations as mig
from batch.ledger.models import canonical_json


def _items(*keys: str) -> list[PlanItem]:
    return [PlanItem(k, {"prompt": k, "image_urls": ["local:a.png"]}) for k in keys]


def _urls(rid: str) -> tuple[str, str, str]:
    base = f"https://queue.fal.run/{ENDPOINT}/requests/{rid}"
    return f"{base}/status", base, f"{base}/cancel"


def test_a_submit_on_its_way_keeps_what_it_carries_until_answered(tmp_path: Path) -> None:
    sent = {"prompt": "a", "image_urls": ["https://v3.fal.media/files/x.png"]}  # after upload
    with Ledger.open(tmp_path / "out") as led:
        led.plan(_items("a"))
        led.mark_submitting("a", payload=sent)
        row = led.get("a")
        assert row is not None and row.submit_started_at is not None
        assert row.sent_payload == canonical_json(sent)
        assert json.loads(row.sent_payload) != row.payload  # the sent form, not the manifest's
        led.mark_submitted("a", "req-1", *_urls("req-1"))
        row = led.get("a")
        assert row is not None
        assert (row.sent_payload, row.submit_started_at, row.recovered) == (None, None, False)
        assert led.known_request_ids(["req-1", "req-x"]) == {"req-1"}
        assert led.request_owner("req-1") == "a" and led.request_owner("req-x") is None


def test_known_request_ids_outlive_retries(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "out") as led:
        led.plan(_items("a", "b"))
        led.mark_submitting("a", payload={"prompt": "a"})
        led.mark_submitted("a", "req-1", *_urls("req-1"))
        led.mark_retry("a", "transient", "500", None)  # the item forgets req-1
        led.mark_submitting("a", payload={"prompt": "a"})
        led.mark_submitted("a", "req-2", *_urls("req-2"))
        assert led.known_request_ids(["req-1", "req-2", "req-3"]) == {"req-1", "req-2"}
        assert led.request_owner("req-1") == "a"


def test_recovered_and_resubmitted_are_counted_and_exported(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with Ledger.open(out) as led:
        led.plan(_items("a", "b", "c"))
        for key in ("a", "b"):
            led.mark_submitting(key, payload={"prompt": key})
        led.mark_submitted("a", "req-a", *_urls("req-a"), recovered=True)
        led.mark_ambiguous("b")
        led.mark_submitted("b", "req-b", *_urls("req-b"))
        assert led.recovery_counts() == (1, 1)
        paths = led.export()
    with open(paths.csv, encoding="utf-8") as fh:
        header, *lines = fh.read().splitlines()
    column = header.split(",").index("recovered")
    assert [line.split(",")[column] for line in lines] == ["true", "false", "false"]
    records = [json.loads(line) for line in paths.jsonl.read_text().splitlines()]
    assert [r["recovered"] for r in records] == [True, False, False]


def test_clearing_a_submit_clears_what_it_carried(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "out") as led:
        led.plan(_items("a"))
        led.mark_submitting("a", payload={"prompt": "a"})
        led.mark_submitting("a", sending=False)
        row = led.get("a")
        assert row is not None and (row.submit_started_at, row.sent_payload) == (None, None)


def test_m007_backfills_request_ids_of_an_older_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shipped = list(mig.MIGRATIONS)
    upto = [name for name, _ in shipped].index("m006_fal_details") + 1
    with monkeypatch.context() as m:
        m.setattr(mig, "MIGRATIONS", shipped[:upto])
        with Ledger.open(out) as old:
            old.plan(_items("a", "b"))
    conn = sqlite3.connect(out / "ledger.sqlite")
    try:
        with conn:  # what the previous version's mark_submitted wrote
            conn.execute(
                "UPDATE items SET state = 'submitted', request_id = 'old-req', submitted_at = 1"
                " WHERE key = 'a'"
            )
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert "requests" not in tables
    with Ledger.open(out) as led:
        assert "m007_sent_requests" in led.applied_migrations()
        assert led.known_request_ids(["old-req"]) == {"old-req"}
        row = led.get("b")
        assert row is not None and (row.recovered, row.sent_payload) == (False, None)


def test_a_salvaged_old_ledger_still_knows_the_request_ids_its_items_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Salvage migrates an empty ledger (m007's backfill finds nothing), then copies the items:
    the ids they hold must still count as ours, or a lost submit could claim one."""
    from batch.ledger.salvage import Salvaged, _copy_all

    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    shipped = list(mig.MIGRATIONS)
    upto = [name for name, _ in shipped].index("m006_fal_details") + 1
    with monkeypatch.context() as m:
        m.setattr(mig, "MIGRATIONS", shipped[:upto])
        with Ledger.open(old_dir) as old:
            old.plan(_items("a", "b"))
    conn = sqlite3.connect(old_dir / "ledger.sqlite")
    try:
        with conn:
            conn.execute(
                "UPDATE items SET state = 'submitted', request_id = 'req-a' WHERE key = 'a'"
            )
    finally:
        conn.close()
    new_dir.mkdir()
    _copy_all(old_dir / "ledger.sqlite", new_dir / "ledger.sqlite", Salvaged(tmp_path))
    with Ledger.open(new_dir, create=False) as led:
        assert led.known_request_ids(["req-a", "req-b"]) == {"req-a"}
        assert led.request_owner("req-a") == "a"
