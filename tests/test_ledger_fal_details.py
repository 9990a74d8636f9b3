"""What fal says beyond success or failure, kept by the ledger (migration m006): the error type
of a failed answer, and the billable units of a result, which spend is counted from."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ENDPOINT, PlanItem

from batch.ledger import Ledger
from batch.ledger import migrations as mig
from batch.ledger.export import FIELDS
from batch.ledger.prices import keep_price
from batch.ledger.spend import JobSpend, job_spend, unit_price
from batch.manifest.pricing import PriceSpec
from batch.outputs.naming import OutputRecord

PER_MP = PriceSpec(per_megapixel=0.03)
PER_IMAGE = PriceSpec(per_image=0.04)


def _items(*keys: str) -> list[PlanItem]:
    # image_size 1000×1000: every item's estimate is known (1 MP)
    size = {"width": 1000, "height": 1000}
    return [
        PlanItem(k, {"prompt": k, "image_urls": ["https://x/a.png"], "image_size": size})
        for k in keys
    ]


def _out(key: str, index: int = 0, width: int = 1000, height: int = 1000) -> OutputRecord:
    return OutputRecord(
        index, f"images/{key}-{index}.png", None, 1, f"{index:064x}", width, height, "image/png"
    )


def _submit(led: Ledger, key: str) -> None:
    led.mark_submitted(key, f"req-{key}", None, None, None)


def _complete(led: Ledger, key: str, units: float | None, outputs: int = 1) -> None:
    _submit(led, key)
    led.mark_completed(
        key,
        [_out(key, i) for i in range(outputs)],
        seed=1,
        timings={},
        nsfw=[False] * outputs,
        billable_units=units,
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "out") as led:
        led.plan(_items("a", "b", "c", "d"))
        yield led


def _fal_prices(led: Ledger, price: PriceSpec) -> str:
    """Keep `price` as fal's own for the items' endpoint (its units are then in that unit);
    the endpoint, for `job_spend`."""
    keep_price(led, ENDPOINT, price)
    return ENDPOINT


# --- migration ---------------------------------------------------------------------------


def test_m006_follows_m005_and_adds_nullable_columns(tmp_path: Path) -> None:
    names = [name for name, _ in mig.MIGRATIONS]
    assert names.index("m006_fal_details") == names.index("m005_request_id_index") + 1
    with Ledger.open(tmp_path / "out") as led:
        led.plan(_items("a"))
        assert "m006_fal_details" in led.applied_migrations()
        row = led.get("a")
    assert row is not None and (row.error_type, row.billable_units) == (None, None)
    conn = sqlite3.connect(tmp_path / "out" / "ledger.sqlite")
    try:
        cols = {r[1]: (r[2], r[3], r[4]) for r in conn.execute("PRAGMA table_info(items)")}
    finally:
        conn.close()
    # (type, notnull, default)
    assert cols["error_type"] == ("TEXT", 0, None)
    assert cols["billable_units"] == ("REAL", 0, None)


def test_a_ledger_made_before_m006_gets_the_columns_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    shipped = list(mig.MIGRATIONS)
    upto = [name for name, _ in shipped].index("m005_request_id_index") + 1
    with monkeypatch.context() as m:  # the previous version: migrations up to m005
        m.setattr(mig, "MIGRATIONS", shipped[:upto])
        with Ledger.open(out) as old:
            old.plan(_items("a", "b"))
    conn = sqlite3.connect(out / "ledger.sqlite")
    try:
        with conn:  # what the previous version's mark_failed wrote
            conn.execute(
                "UPDATE items SET state = 'failed', error_kind = 'permanent',"
                " error_message = '422' WHERE key = 'b'"
            )
        names = {r[1] for r in conn.execute("PRAGMA table_info(items)")}
        applied = {r[0] for r in conn.execute("SELECT name FROM migrations")}
    finally:
        conn.close()
    assert "error_type" not in names and "billable_units" not in names
    assert "m006_fal_details" not in applied

    with Ledger.open(out) as led:
        assert "m006_fal_details" in led.applied_migrations()
        old_row = led.get("b")
        assert old_row is not None and old_row.state == "failed"
        assert (old_row.error_kind, old_row.error_type, old_row.billable_units) == (
            "permanent",
            None,
            None,
        )
        _complete(led, "a", 1.5)
        row = led.get("a")
        assert row is not None and row.billable_units == 1.5
        led.export()  # the exports read the new columns of old rows too
    with Ledger.open(out) as led:  # reopening applies nothing again
        assert led.applied_migrations().count("m006_fal_details") == 1


# --- transitions -------------------------------------------------------------------------


def test_error_type_is_kept_by_failures_and_retries(ledger: Ledger) -> None:
    _submit(ledger, "a")
    ledger.mark_failed("a", "permanent", "422: too big", error_type="image_too_large")
    row = ledger.get("a")
    assert row is not None
    assert (row.state, row.error_kind, row.error_type) == ("failed", "permanent", "image_too_large")

    ledger.mark_retry("b", "transient", "503", 12.0, error_type="runner_unavailable")
    row = ledger.get("b")
    assert row is not None and (row.state, row.error_type) == ("pending", "runner_unavailable")
    # the next failure replaces it, with its own type or none
    ledger.mark_failed("b", "permanent", "422")
    row = ledger.get("b")
    assert row is not None and (row.error_kind, row.error_type) == ("permanent", None)

    ledger.mark_failed("c", "permanent", "422")  # existing callers: no error type
    row = ledger.get("c")
    assert row is not None and row.error_type is None


def test_completion_records_units_and_clears_the_error_type(ledger: Ledger) -> None:
    ledger.mark_retry("a", "transient", "503", None, error_type="runner_unavailable")
    _complete(ledger, "a", 2.5)
    row = ledger.get("a")
    assert row is not None and row.state == "completed"
    assert (row.error_kind, row.error_type, row.billable_units) == (None, None, 2.5)

    _submit(ledger, "b")
    ledger.mark_completed("b", [_out("b")], seed=1, timings={}, nsfw=[False])  # as before
    row = ledger.get("b")
    assert row is not None and row.billable_units is None


@pytest.mark.parametrize("units", [math.nan, math.inf, -1.0])
def test_units_that_are_not_a_count_are_not_stored(ledger: Ledger, units: float) -> None:
    _complete(ledger, "a", units)
    row = ledger.get("a")
    assert row is not None and row.state == "completed" and row.billable_units is None


def test_reset_to_pending_clears_the_error_type(ledger: Ledger) -> None:
    _submit(ledger, "a")
    ledger.mark_failed("a", "permanent", "422", error_type="image_too_large")
    _submit(ledger, "b")
    ledger.mark_failed("b", "download", "timed out", error_type="timeout")
    assert ledger.reset_to_pending() == 2
    for key, state in (("a", "pending"), ("b", "submitted")):
        row = ledger.get(key)
        assert row is not None and (row.state, row.error_kind, row.error_type) == (
            state,
            None,
            None,
        )


def test_a_redone_changed_item_forgets_its_units(ledger: Ledger) -> None:
    _complete(ledger, "a", 3.0)
    changed = PlanItem("a", {"prompt": "another", "image_urls": ["https://x/a.png"]})
    ledger.plan([changed], redo_changed=True)
    row = ledger.get("a")
    assert row is not None and (row.state, row.billable_units, row.error_type) == (
        "pending",
        None,
        None,
    )


# --- exports -----------------------------------------------------------------------------


def test_exports_carry_error_type_and_billable_units_after_the_first_columns(
    ledger: Ledger,
) -> None:
    # appended (then m007's `recovered`): scripts reading columns by position keep working
    assert FIELDS[-3:] == ("error_type", "billable_units", "recovered")
    _complete(ledger, "a", 1.25)
    _submit(ledger, "b")
    ledger.mark_failed("b", "permanent", "422", error_type="image_too_large")
    paths = ledger.export()

    with paths.csv.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == list(FIELDS)
        rows = {r["key"]: r for r in reader}
    assert (rows["a"]["billable_units"], rows["a"]["error_type"]) == ("1.25", "")
    assert (rows["b"]["billable_units"], rows["b"]["error_type"]) == ("", "image_too_large")
    assert (rows["c"]["billable_units"], rows["c"]["error_type"]) == ("", "")

    records = {
        r["key"]: r for r in map(json.loads, paths.jsonl.read_text(encoding="utf-8").splitlines())
    }
    assert all(list(r) == list(FIELDS) for r in records.values())
    assert (records["a"]["billable_units"], records["a"]["error_type"]) == (1.25, None)
    assert (records["b"]["billable_units"], records["b"]["error_type"]) == (
        None,
        "image_too_large",
    )


# --- spend -------------------------------------------------------------------------------


def test_unit_price_is_the_price_that_is_set() -> None:
    assert unit_price(PER_MP) == 0.03 and unit_price(PER_IMAGE) == 0.04


def test_spend_counts_units_where_present_and_the_estimate_otherwise(ledger: Ledger) -> None:
    _complete(ledger, "a", 2.0)  # 1 MP of outputs, but fal billed 2 units
    _complete(ledger, "b", None)  # no units: its outputs, 1 MP
    _complete(ledger, "c", 0.0)  # billed nothing: 0, not the estimate

    spend = job_spend(ledger, PER_MP, _fal_prices(ledger, PER_MP))

    assert spend.spent == pytest.approx(2.0 * 0.03 + 1.0 * 0.03)
    assert (spend.billed, spend.estimated) == (2, 1)
    assert spend.largest == 1_000_000  # from every completed output, billed or not
    assert spend.basis() == "billed units for 2 items, estimate for 1, at $0.03/MP"

    # fal bills this endpoint per megapixel: a job priced per image cannot price its units
    per_image = job_spend(ledger, PER_IMAGE, ENDPOINT)
    assert per_image.spent == pytest.approx(3 * 0.04) and per_image.billed == 0
    assert job_spend(ledger, PER_MP).billed == 0  # fal's unit unknown: the estimate


def test_spend_without_units_is_the_estimate_as_before(ledger: Ledger) -> None:
    _complete(ledger, "a", None, outputs=2)
    _submit(ledger, "b")
    ledger.mark_failed("b", "download", "timed out")  # paid for: its estimate
    _submit(ledger, "c")  # in flight: held

    spend = job_spend(ledger, PER_MP)

    assert spend.spent == pytest.approx(2 * 0.03 + 0.03)
    assert spend.holds == {"c": pytest.approx(0.03)}
    assert (spend.billed, spend.estimated) == (0, 2)
    assert spend.basis() == "estimate at $0.03/MP"


def test_spend_of_billed_items_only(ledger: Ledger) -> None:
    _complete(ledger, "a", 4.0)
    spend = job_spend(ledger, PER_IMAGE, _fal_prices(ledger, PER_IMAGE))
    assert spend.spent == pytest.approx(0.16)
    assert spend.basis() == "billed units at $0.04/image"


def test_add_completed_uses_units_when_given() -> None:
    spend = JobSpend(PER_MP, {}, use_units=True)
    big = _out("a", width=2000, height=1000)  # 2 MP
    spend.add_completed([big])  # the existing call: the estimate
    assert spend.spent == pytest.approx(0.06) and spend.largest == 2_000_000
    spend.add_completed([_out("b")], billable_units=5.0)
    assert spend.spent == pytest.approx(0.06 + 0.15)
    spend.add_completed([], billable_units=0.0)
    assert spend.spent == pytest.approx(0.21)
    assert (spend.billed, spend.estimated) == (2, 1)
