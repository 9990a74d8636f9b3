"""What fal says beyond success or failure, as `status` and the report show it: an account fal
locked (out of credit), spend from fal's billable units, and error types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from batch.cli import main
from batch.ledger import ACCOUNT_LOCKED_META, Ledger
from batch.ledger.prices import keep_price
from batch.manifest.pricing import PriceSpec
from batch.outputs.naming import OutputRecord
from batch.report.sheet import write_report
from batch.report.status import job_status

REASON = "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard"
PRICE = PriceSpec(per_image=0.25)
ENDPOINT = "fal-ai/firered-image-edit"


class _Item:
    def __init__(self, key: str) -> None:
        self.key = key
        self.endpoint = ENDPOINT
        self.payload = {"prompt": key, "image_urls": ["https://example.com/a.png"]}
        self.source = f"m.jsonl:{key}"


def _ledger(out: Path, *, locked: str | None = REASON) -> None:
    """Five items: `billed` completed with 3 billable units, `plain` completed without,
    `bad` failed with an error type, two pending (`p0`, `p1`); the account locked."""
    with Ledger.open(out) as ledger:
        ledger.plan([_Item(k) for k in ("bad", "billed", "p0", "p1", "plain")])
        for key, units in (("billed", 3.0), ("plain", None)):
            ledger.mark_submitted(key, f"r-{key}", None, None, None)
            record = OutputRecord(0, f"images/{key}.png", None, 1, "0" * 64, 8, 8, "image/png")
            ledger.mark_completed(
                key, [record], seed=1, timings={}, nsfw=[False], billable_units=units
            )
        ledger.mark_submitted("bad", "r-bad", None, None, None)
        ledger.mark_failed("bad", "permanent", "HTTP 422: too big", error_type="image_too_large")
        ledger.set_meta(ACCOUNT_LOCKED_META, locked)
        keep_price(ledger, ENDPOINT, PRICE)  # fal's price: its units are priced per image


def _status(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["status", *args])
    return result.exit_code, result.output


def test_status_says_the_job_waits_on_a_locked_account(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _ledger(out)

    with Ledger.open(out) as ledger:
        status = job_status(ledger, name="shots")

    assert status.account_locked == REASON and status.waiting == 2
    lines = status.text().splitlines()
    expected = (
        f"waiting on the fal account: {REASON} — top up, then run the same command again"
        " (2 items wait)"
    )
    assert lines[-1] == expected
    assert sum("waiting on the fal account" in line for line in lines) == 1
    assert status.as_dict()["account_locked"] == REASON


def test_status_of_an_unlocked_account_says_nothing_of_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _ledger(out)
    with Ledger.open(out) as ledger:
        ledger.set_meta(ACCOUNT_LOCKED_META, None)  # a submit was accepted again
        status = job_status(ledger, name="shots")
    assert status.account_locked is None
    assert "fal account" not in status.text()
    assert status.as_dict()["account_locked"] is None


def test_a_long_reason_stays_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _ledger(out, locked="User is locked.\nReason: " + "x" * 1000)
    with Ledger.open(out) as ledger:
        text = job_status(ledger, name="shots").text()
    [line] = [line for line in text.splitlines() if "fal account" in line]
    assert "User is locked. Reason: x" in line and len(line) < 450
    assert line.endswith("run the same command again (2 items wait)")


def test_status_command_shows_the_lock_and_spend_from_units(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _ledger(out)
    (tmp_path / "m.csv").write_text("prompt,image_urls\nx,https://example.com/a.png\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"manifest: m.csv\noutput: {out}\nprice: {{per_image: 0.25}}\n")

    code, text = _status(str(job))

    assert code == 0, text
    # billed: 3 units × $0.25; plain: 1 output image × $0.25 (estimate)
    assert "spent: $1.00 (billed units for 1 item, estimate for 1, at $0.25/image)" in text
    assert text.splitlines()[-1].startswith(f"waiting on the fal account: {REASON} — top up")

    code, text = _status(str(job), "--json")

    assert code == 0, text
    data = json.loads(text)
    assert data["account_locked"] == REASON
    assert data["spent_usd"] == 1.0 and data["spent_billed_items"] == 1


def _records(page: Path) -> dict[str, dict[str, Any]]:
    text = page.read_text(encoding="utf-8")
    data = text.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    return {r["k"]: r for r in json.loads(data)}


def test_report_shows_units_error_types_and_spend_from_units(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _ledger(out)

    report = write_report(out, title="shots", price=PRICE, endpoint=ENDPOINT)

    records = _records(report.path)
    assert records["billed"]["u"] == 3.0 and "u" not in records["plain"]
    assert records["bad"]["e"] == "permanent: HTTP 422: too big"
    assert records["bad"]["et"] == "image_too_large" and "et" not in records["billed"]
    assert report.spend is not None and report.spend.spent == 1.0
    page = report.path.read_text(encoding="utf-8")
    assert "Cost: $1.00 spent (billed units for 1 item, estimate for 1, at $0.25/image)" in page


async def test_report_cards_show_units_and_error_type(tmp_path: Path, chromium) -> None:
    out = tmp_path / "out"
    _ledger(out)
    page = write_report(out, title="shots", price=PRICE, endpoint=ENDPOINT).path

    dom = await chromium.dom(page)

    cards = {card["data-key"]: card for card in dom.cards}
    assert len(cards) == 5
    assert cards["billed"].get("data-units") == "3"
    assert "data-units" not in cards["plain"]
    assert cards["bad"].get("data-error-type") == "image_too_large"
    assert "3 billed units" in dom.texts["grid"]  # in the billed card's facts
    assert dom.texts["grid"].count("billed unit") == 1
    assert "permanent: HTTP 422: too big (fal error type: image_too_large)" in dom.texts["grid"]
    assert "Cost: $1.00 spent (billed units for 1 item" in dom.texts["cost"]
