"""The report of a comparison (``endpoints:``), a pilot and a redo: a real job run against the
simulator on three endpoints (a pilot of 2 inputs first, then the rest; one output rejected and
redone), checked against the ledger in Python and in a headless Chromium (DOM dumps).

What a page is built from: each record's ``en``/``b``/``c``/``pl``/``ro`` and the embedded
``compare-data`` totals. What Chromium shows: ``#view=compare`` has one row per input and one
column per endpoint, each cell's latency, the header's counts, latencies and costs as the
ledger has them; the Pilot filter; the redo right after its original.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from support import Runner, png_uri, write_csv

from batch.fal.endpoints import endpoint_alias, input_key
from batch.ledger import Ledger
from batch.ledger.prices import keep_price
from batch.ledger.redo import Change, redo_rejected
from batch.manifest.pricing import PriceSpec, usd
from batch.report.compare import Compared, fine_usd
from batch.report.page import quantile
from batch.report.sheet import render_report, report_for, write_report

FIRERED, QWEN, KONTEXT = (
    "fal-ai/firered-image-edit",
    "fal-ai/qwen-image-edit",
    "fal-ai/flux-kontext/dev",
)
ENDPOINTS = [FIRERED, QWEN, KONTEXT]
QWEN_PRICE = PriceSpec(per_megapixel=0.03)  # kept for qwen; flux-kontext/dev has no price
BROKEN_IMAGE = "data:image/png;base64,AAAAAAAA"  # the simulator cannot load it: a 422
INPUTS = ["blue", "green", "red", "teal", "zbad"]


@dataclass
class Job:
    out: Path
    page: Path
    pilot: set[str]  # item keys of the pilot
    original: str  # the rejected item
    redo: str  # its redo


def _rows() -> list[dict[str, Any]]:
    colors = {"blue": (30, 60, 200), "green": (30, 160, 60), "red": (200, 40, 40)}
    colors["teal"] = (20, 150, 150)
    rows = [
        {"id": name, "prompt": f"paint the {name} one", "image_urls": [png_uri(48, 32, rgb)]}
        for name, rgb in colors.items()
    ]
    return [*rows, {"id": "zbad", "prompt": "sharpen", "image_urls": [BROKEN_IMAGE]}]


@pytest.fixture
async def job(runner: Runner) -> Job:
    """A pilot (2 inputs × 3 endpoints), the full run, then one rejected output redone."""
    await runner.start()
    manifest = runner.tmp / "m.csv"
    write_csv(manifest, _rows())
    spec = runner.spec(manifest, endpoints=ENDPOINTS, name="cmp")
    await runner.run(spec, sample=(2, 1))
    full = await runner.run(spec)
    assert full.counts["failed"] == 3 and full.counts["completed"] == 12, full.text()
    original = "green@qwen-image-edit"
    with Ledger.open(spec.output) as ledger:
        keep_price(ledger, QWEN, QWEN_PRICE)
        ledger.reviews.decide(original, 0, "rejected", reviewer="t")
        with ledger.group() as conn:
            [(redo, _, _)] = redo_rejected(conn, [original], Change(new_seed=True))
        pilot = {k for (k,) in ledger._conn.execute("SELECT key FROM items WHERE pilot = 1")}
    again = await runner.run(spec)  # does the redo; writes the report
    assert again.counts["completed"] == 13, again.text()
    report_for(spec)
    return Job(spec.output, spec.output / "report.html", pilot, original, redo)


def _ledger_items(out: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(out / "ledger.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT i.key, i.endpoint, i.state, i.submitted_at, i.completed_at,"
            " i.billable_units, i.pilot, i.redo_of, count(o.idx) AS images"
            " FROM items AS i LEFT JOIN outputs AS o ON o.item_key = i.key GROUP BY i.key"
        ).fetchall()
    finally:
        conn.close()
    items = [dict(r) for r in rows]
    for item in items:
        done = item["state"] == "completed"
        item["latency"] = item["completed_at"] - item["submitted_at"] if done else None
    return items


def _records(page: Path) -> tuple[dict[str, dict[str, Any]], Any]:
    text = page.read_text(encoding="utf-8")
    data = text.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    _, found, rest = text.partition('id="compare-data">')
    compare = json.loads(rest.split("</script>", 1)[0]) if found else None
    return {r["k"]: r for r in json.loads(data)}, compare


def _seconds(value: float | None) -> str:
    """How the page shows a latency: kept to the millisecond in the page's data, shown with
    JavaScript's toFixed(2) (ties away from zero)."""
    if value is None:
        return "\u2013"
    return f"{Decimal(round(value, 3)).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)} s"


# --- what the page is built from ---------------------------------------------------------


async def test_the_records_and_totals_the_page_is_built_from_match_the_ledger(job: Job):
    """Every record names its endpoint's column and its input; the pilot's and the redo's are
    marked; each endpoint's totals (counts, latency quantiles, units, cost at its own price)
    are the ledger's; an endpoint without a price has no cost."""
    records, compare = _records(job.page)
    items = _ledger_items(job.out)
    assert [e["id"] for e in compare["endpoints"]] == ENDPOINTS  # the job's order
    assert len(records) == len(items) == 16
    for item in items:
        record = records[item["key"]]
        assert compare["endpoints"][record["en"]]["id"] == item["endpoint"]
        assert record["b"] == item["key"].split("@")[0]
        assert record.get("pl", False) == bool(item["pilot"])
        assert record.get("ro") == item["redo_of"]
    assert {k for k, r in records.items() if r.get("pl")} == job.pilot and len(job.pilot) == 6
    assert records[job.redo]["ro"] == job.original and records[job.redo]["s"] == "completed"

    with Ledger.open(job.out) as ledger:
        firered_price = ledger.get_meta(f"price:{FIRERED}")
    assert firered_price is not None  # the run learnt it from the simulator's pricing API
    unit = {FIRERED: json.loads(firered_price)["price"]["per_megapixel"], QWEN: 0.03}
    for n, endpoint in enumerate(ENDPOINTS):
        mine = [i for i in items if i["endpoint"] == endpoint]
        done = [i for i in mine if i["state"] == "completed"]
        latencies = sorted(i["latency"] for i in done)
        totals = compare["endpoints"][n]["t"]
        assert (totals["n"], totals["done"], totals["failed"], totals["open"]) == (
            len(mine),
            len(done),
            sum(i["state"] == "failed" for i in mine),
            0,
        )
        assert totals["med"] == round(quantile(latencies, 0.5), 3)
        assert totals["p95"] == round(quantile(latencies, 0.95), 3)
        assert totals["img"] == sum(i["images"] for i in done)
        assert totals["u"] == pytest.approx(sum(i["billable_units"] for i in done))
        if endpoint in unit:
            cost = sum(i["billable_units"] * unit[endpoint] for i in done)
            assert totals["cost"] == pytest.approx(cost, abs=1e-6)
            assert totals["cost_t"] == usd(cost)
            assert totals["per"] == pytest.approx(cost / totals["img"], abs=1e-6)
            for i in done:
                assert records[i["key"]]["c"] == pytest.approx(
                    i["billable_units"] * unit[endpoint], abs=1e-6
                )
        else:
            assert "cost" not in totals and all("c" not in records[i["key"]] for i in done)
    every = compare["all"]
    assert (every["n"], every["done"], every["failed"]) == (16, 13, 3)
    assert every["cost"] == pytest.approx(sum(e["t"].get("cost", 0) for e in compare["endpoints"]))
    assert every["unpriced"] == ["flux-kontext-dev"]


def test_keys_inputs_and_aliases():
    """An item's input is its key without the endpoint's alias and any redo suffix."""
    assert endpoint_alias(KONTEXT) == "flux-kontext-dev"
    assert input_key("cat@flux-kontext-dev", KONTEXT) == "cat"
    assert input_key("cat@qwen-image-edit~redo2", QWEN) == "cat"
    assert input_key("a@b@qwen-image-edit", QWEN) == "a@b"
    assert input_key("cat~redo1", FIRERED) == "cat"  # a single endpoint's key has no alias
    assert input_key("shot~redo-final@qwen-image-edit~redo1", QWEN) == "shot~redo-final"


def _plan(out: Path, items: list[tuple[str, str]]) -> None:
    with Ledger.open(out) as ledger:
        ledger.plan(
            _Item(key, endpoint, {"prompt": key, "image_urls": ["https://example.com/a.png"]})
            for key, endpoint in items
        )


class _Item:
    def __init__(self, key: str, endpoint: str, payload: dict[str, Any]) -> None:
        self.key, self.endpoint, self.payload = key, endpoint, payload
        self.source = f"m.jsonl:{key}"


def test_one_endpoint_makes_no_comparison_and_an_old_ledger_still_reports(tmp_path: Path):
    """One endpoint: no Compare view (no ``compare-data``), records without ``en``. A
    ledger from before pilots and redos (no such columns) is reported without them."""
    out = tmp_path / "one"
    _plan(out, [("a", FIRERED), ("b", FIRERED)])
    report, page = render_report(out, title="one")
    assert report.compare is None and report.pilot == report.redos == 0
    assert 'id="compare-data"' not in page and '"en":' not in page
    with sqlite3.connect(out / "ledger.sqlite") as conn:
        conn.execute("DROP INDEX IF EXISTS items_redo_of")
        conn.execute("ALTER TABLE items DROP COLUMN pilot")
        conn.execute("ALTER TABLE items DROP COLUMN redo_of")
    records, _ = _records(write_report(out, title="old").path)
    assert set(records) == {"a", "b"} and not any("pl" in r or "ro" in r for r in records.values())


def test_columns_follow_the_jobs_order_then_the_ledgers(tmp_path: Path):
    """The Compare view's columns: the endpoints given (the job's order), then the others."""
    out = tmp_path / "two"
    _plan(out, [("a@qwen-image-edit", QWEN), ("a@firered-image-edit", FIRERED)])
    _plan(out, [("a@flux-kontext-dev", KONTEXT)])
    with sqlite3.connect(out / "ledger.sqlite") as conn:
        assert Compared.read(conn) is not None
        found = Compared.read(conn, [QWEN])
    assert found is not None and found.endpoints == [QWEN, FIRERED, KONTEXT]
    assert found.prices == {} and found.cost_line() is None
    report = write_report(out, title="two", endpoints=[KONTEXT, QWEN])
    assert report.compare is not None and report.compare.endpoints == [KONTEXT, QWEN, FIRERED]


# --- in the browser -----------------------------------------------------------------------


@dataclass
class Row:
    input: str
    cells: dict[str, list[str]]  # endpoint → item keys, top to bottom
    latency: dict[str, str]  # item key → its latency text
    money: dict[str, str]  # item key → its cost (or billed units) text


class _CompareParser(HTMLParser):
    """The Compare view's rows out of a DOM dump: each row's cells, their cards, latencies and
    costs."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self.columns: list[str] = []  # the header's endpoints
        self._endpoint: str | None = None
        self._card: str | None = None
        self._span: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "th" and "cmp-head" in values.get("class", "") and "data-endpoint" in values:
            self.columns.append(values["data-endpoint"])
        if tag == "tr" and "data-input" in values:
            self.rows.append(Row(values["data-input"], {}, {}, {}))
        if tag == "td" and "data-endpoint" in values:
            self._endpoint = values["data-endpoint"]
            self.rows[-1].cells[self._endpoint] = []
        if tag == "article" and self._endpoint is not None:
            self._card = values["data-key"]
            self.rows[-1].cells[self._endpoint].append(self._card)
        classes = values.get("class", "").split() if tag == "span" else []
        self._span = next((c for c in classes if c in ("lat", "money")), None)

    def handle_endtag(self, tag: str) -> None:
        self._span = None
        if tag == "td":
            self._endpoint = None

    def handle_data(self, data: str) -> None:
        if self._span is not None and self._card is not None:
            row = self.rows[-1]
            (row.latency if self._span == "lat" else row.money)[self._card] = data


async def _compare_view(chromium: Any, page: Path, fragment: str = "view=compare") -> Any:
    """The DOM dump (`conftest.Dom`) and the Compare view's rows and header columns."""
    parser = _CompareParser()
    dom = await chromium.dom(page, fragment, also=parser)
    return dom, parser


async def test_compare_view_has_a_row_per_input_a_column_per_endpoint_and_the_ledgers_totals(
    job: Job, chromium
):
    """``#view=compare``: 5 rows (one per input) × 3 columns in the job's order, each cell the
    item of that input on that endpoint with its latency; the header's done, failed, median,
    p95 and cost are the ledger's, for each endpoint and across them."""
    dom, view = await _compare_view(chromium, job.page)
    items = {i["key"]: i for i in _ledger_items(job.out)}
    records, compare = _records(job.page)
    assert dom.body["data-view"] == "compare" and dom.body["data-thumbs"] == "ok"
    assert dom.body["data-matches"] == "5" and dom.texts["shown"] == "1–5 of 5 inputs"
    assert view.columns == ENDPOINTS
    assert [row.input for row in view.rows] == INPUTS
    for row in view.rows:
        assert list(row.cells) == ENDPOINTS
        for endpoint, keys in row.cells.items():
            key = f"{row.input}@{endpoint_alias(endpoint)}"
            assert keys == ([key, job.redo] if key == job.original else [key])
            for shown in keys:
                assert row.latency[shown] == _seconds(items[shown]["latency"])
                units = items[shown]["billable_units"]
                cost = records[shown].get("c")
                if cost is not None:  # the item's cost at its endpoint's price
                    assert row.money[shown] == fine_usd(cost)
                elif units is not None:  # no price known: fal's billed units
                    assert row.money[shown] == f"{float(f'{units:.4g}'):g} billed units"
    assert int(dom.body["data-cards"]) == 16

    for n, endpoint in enumerate(ENDPOINTS):
        mine = [i for i in items.values() if i["endpoint"] == endpoint]
        latencies = sorted(i["latency"] for i in mine if i["latency"] is not None)
        assert dom.texts[f"cmp-done-{n}"] == str(len(latencies))
        assert dom.texts[f"cmp-failed-{n}"] == str(sum(i["state"] == "failed" for i in mine))
        assert dom.texts[f"cmp-median-{n}"] == _seconds(round(quantile(latencies, 0.5), 3))
        assert dom.texts[f"cmp-p95-{n}"] == _seconds(round(quantile(latencies, 0.95), 3))
    assert dom.texts["cmp-cost-0"] == compare["endpoints"][0]["t"]["cost_t"]
    assert dom.texts["cmp-cost-1"] == compare["endpoints"][1]["t"]["cost_t"]
    assert dom.texts["cmp-cost-2"] == "—"  # no price known: the billed units instead
    assert dom.texts["cmp-units-2"].endswith(" billed units")
    assert (dom.texts["cmp-done-all"], dom.texts["cmp-failed-all"]) == ("13", "3")
    assert dom.texts["cmp-cost-all"] == compare["all"]["cost_t"]
    assert dom.texts["cost"].startswith(f"Cost: {compare['all']['cost_t']} spent")

    failed = await _compare_view(chromium, job.page, "view=compare&filter=failed")
    assert [row.input for row in failed[1].rows] == ["zbad"]  # the whole row, all 3 endpoints
    assert list(failed[1].rows[0].cells) == ENDPOINTS


async def test_pilot_filter_and_redo_beside_its_original(job: Job, chromium):
    """The Pilot filter shows the pilot's 6 items (each with its badge); in the Compare view,
    its 2 inputs. The redo's card comes right after its original's, which says it was
    redone; the tiles count the pilot and the redo."""
    dom, _ = await _compare_view(chromium, job.page, "filter=pilot")
    assert dom.body["data-view"] == "sheet" and dom.body["data-pilot"] == "some"
    assert dom.body["data-matches"] == "6"
    assert {c["data-key"] for c in dom.cards} == job.pilot
    assert dom.texts["count-pilot"] == "6" and dom.texts["count-redos"] == "1"
    assert dom.texts["grid"].count("pilot") >= 6  # a badge on each card

    _, pilot_rows = await _compare_view(chromium, job.page, "view=compare&filter=pilot")
    assert {r.input for r in pilot_rows.rows} == {k.split("@")[0] for k in job.pilot}
    assert len(pilot_rows.rows) == 2

    sheet, _ = await _compare_view(chromium, job.page, "")
    keys = [c["data-key"] for c in sheet.cards]
    at = keys.index(job.original)
    assert keys[at + 1] == job.redo  # not after every other key (`~` sorts last)
    assert sheet.cards[at]["data-redone-as"] == job.redo
    assert sheet.cards[at + 1]["data-redo-of"] == job.original
    assert f"redone as {job.redo}" in sheet.texts["grid"]
    assert f"redo of {job.original}" in sheet.texts["grid"]

    redos, _ = await _compare_view(chromium, job.page, "filter=redo")
    assert [c["data-key"] for c in redos.cards] == [job.original, job.redo]
