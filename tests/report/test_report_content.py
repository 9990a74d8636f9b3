"""What the report holds: thumbnails made once, nothing inlined or hotlinked, a page per run."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from PIL import Image
from support import png_uri

from batch.cli import main
from batch.ledger import Ledger
from batch.manifest.localfiles import LOCAL_PREFIX, LocalFile
from batch.outputs.naming import OutputRecord
from batch.report.sheet import write_report

REMOTE = "https://example.com/photo.jpg"


class _Item:
    def __init__(self, key: str, payload: dict[str, Any]) -> None:
        self.key = key
        self.endpoint = "fal-ai/firered-image-edit"
        self.payload = payload
        self.source = f"m.jsonl:{key}"


def _records(page: Path) -> dict[str, dict[str, Any]]:
    text = page.read_text(encoding="utf-8")
    data = text.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    return {r["k"]: r for r in json.loads(data)}


def _ledger(out: Path, photo: Path) -> None:
    """Three items: a local input (completed), a data: URI input, a remote input."""
    (out / "images").mkdir(parents=True)
    Image.new("RGB", (600, 400), (200, 30, 30)).save(out / "images" / "local_0.png")
    data = photo.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    st = photo.stat()
    local = LocalFile(
        sha, str(photo), st.st_size, st.st_mtime_ns, st.st_ctime_ns, "image/jpeg", 900, 600
    )
    with Ledger.open(out) as ledger:
        ledger.uploads.record_files([local])
        ledger.plan(
            [
                _Item("local", {"prompt": "a local photo", "image_urls": [LOCAL_PREFIX + sha]}),
                _Item("inline", {"prompt": "an inline image", "image_urls": [png_uri(300, 200)]}),
                _Item("remote", {"prompt": "a remote image", "image_urls": [REMOTE]}),
            ]
        )
        ledger.mark_submitted("local", "r1", None, None, None)
        record = OutputRecord(0, "images/local_0.png", "u", 1, "0" * 64, 600, 400, "image/png")
        ledger.mark_completed("local", [record], seed=3, timings={"inference": 1.5}, nsfw=[True])


def test_thumbnails_are_small_files_made_once_and_nothing_is_inlined_or_hotlinked(tmp_path):
    photo = tmp_path / "photos" / "p.jpg"
    photo.parent.mkdir()
    Image.new("RGB", (900, 600), (20, 90, 160)).save(photo)
    out = tmp_path / "out"
    _ledger(out, photo)

    first = write_report(out, title="t")

    assert (first.thumbs_made, first.thumbs_failed) == (3, 0)  # local input, inline, output
    page = first.path.read_text(encoding="utf-8")
    assert "data:image" not in page  # the request's inline image is not copied into the page
    assert 'src="http' not in page and "url(http" not in page
    records = _records(first.path)
    assert records["remote"]["i"] == [[None, REMOTE, "remote"]]  # a link, never an <img>
    [[thumb, href, label]] = records["local"]["i"]
    assert label == "local" and thumb.startswith("thumbs/inputs/")
    assert (out / href).resolve() == photo.resolve()  # the link leads to the full image
    [[out_thumb, out_href, _]] = records["local"]["o"]
    assert (out_thumb, out_href) == ("thumbs/images/local_0.png.jpg", "images/local_0.png")
    assert records["local"]["f"] is True and records["local"]["l"] is not None
    for rel in (thumb, out_thumb, records["inline"]["i"][0][0]):
        with Image.open(out / rel) as img:
            assert img.format == "JPEG" and max(img.size) <= 256

    again = write_report(out, title="t")
    assert again.thumbs_made == 0  # up to date: skipped

    newer = out / "images" / "local_0.png"
    Image.new("RGB", (600, 400), (0, 0, 0)).save(newer)
    later = os.stat(out / out_thumb).st_mtime_ns + 10**9
    os.utime(newer, ns=(later, later))
    assert write_report(out, title="t").thumbs_made == 1  # the output changed: made again


def test_a_missing_output_file_shows_a_placeholder(tmp_path):
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (90, 60)).save(photo)
    out = tmp_path / "out"
    _ledger(out, photo)
    (out / "images" / "local_0.png").unlink()
    records = _records(write_report(out, title="t").path)
    assert records["local"]["o"] == [[None, None, "missing"]]


async def test_every_run_writes_the_report_and_the_command_rewrites_it(make_runner, rows):
    runner = await make_runner()
    runner.write(rows(ok=2, flagged=0, broken=1))
    summary = await runner.run()
    page = runner.out / "report.html"
    assert page.is_file() and f"report: {page}" in summary.text()
    records = _records(page)
    assert set(records) == {"ok0", "ok1", "bad0"}
    assert records["bad0"]["i"] == [[None, None, "no thumbnail"]]  # not an image: no dead link
    assert records["bad0"]["e"].startswith("permanent: ") and records["bad0"]["o"] == []

    page.unlink()
    cli = CliRunner()
    result = cli.invoke(main, ["report", str(runner.manifest), "--output", str(runner.out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(page) and page.is_file()


def test_report_command_without_a_ledger_exits_2_and_has_help(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("prompt,image_urls\nx,https://example.com/a.png\n", encoding="utf-8")
    cli = CliRunner()
    result = cli.invoke(main, ["report", str(manifest), "--output", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no ledger yet" in result.output
    for command in ("report", "status"):
        assert "Example: firered-batch" in cli.invoke(main, [command, "--help"]).output


def test_an_output_no_bigger_than_a_thumbnail_is_shown_as_it_is(tmp_path):
    """At most 256 px a side, light and browser-shown: the image is its own thumbnail (none is
    made). One pixel wider, too heavy, or in a format browsers do not show: a thumbnail."""
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    shapes = {
        "small": ((256, 200), "png", None),
        "wide": ((257, 200), "png", None),
        "heavy": ((256, 200), "png", 200_000),
        "tiff": ((64, 64), "tiff", None),
    }
    with Ledger.open(out) as ledger:
        ledger.plan([_Item(key, {"prompt": key, "image_urls": [REMOTE]}) for key in shapes])
        for key, ((w, h), fmt, claimed) in shapes.items():
            path = out / "images" / f"{key}_0.{fmt}"
            Image.new("RGB", (w, h), (10, 20, 30)).save(path)
            size = claimed if claimed is not None else path.stat().st_size
            record = OutputRecord(0, f"images/{path.name}", "u", size, "0" * 64, w, h, "image/x")
            ledger.mark_submitted(key, f"r-{key}", None, None, None)
            ledger.mark_completed(key, [record], seed=1, timings=None, nsfw=None)

    report = write_report(out, title="t")

    records = _records(report.path)
    assert records["small"]["o"] == [["images/small_0.png", "images/small_0.png", "output"]]
    for key in ("wide", "heavy", "tiff"):
        [[thumb, href, _]] = records[key]["o"]
        assert thumb.startswith("thumbs/images/") and href.startswith(f"images/{key}_0.")
        with Image.open(out / thumb) as img:
            assert img.format == "JPEG" and max(img.size) <= 256
    assert report.thumbs_made == 3
    assert not (out / "thumbs" / "images" / "small_0.png.jpg").exists()


def test_an_input_shared_by_many_cards_is_thumbnailed_once_and_a_failure_shows_on_every_card(
    tmp_path,
):
    """More cards than one batch of thumbnails (CHUNK): the shared inputs are worked out once,
    and the one that cannot be decoded is a placeholder on every card, not only the first."""
    good, broken = png_uri(300, 200), "data:image/png;base64,AAAAAAAA"
    out = tmp_path / "out"
    with Ledger.open(out) as ledger:
        ledger.plan(
            [_Item(f"k{i:04d}", {"prompt": "p", "image_urls": [good, broken]}) for i in range(450)]
        )

    report = write_report(out, title="t")

    assert (report.thumbs_made, report.thumbs_failed) == (1, 1)
    cards = _records(report.path)
    assert len(cards) == 450
    assert {json.dumps(card["i"]) for card in cards.values()} == {
        json.dumps(cards["k0000"]["i"])
    }  # every card the same
    [[good_thumb, _, good_label], [broken_thumb, _, broken_label]] = cards["k0449"]["i"]
    assert good_label == "inline" and good_thumb.startswith("thumbs/inputs/d-")
    assert (broken_thumb, broken_label) == (None, "no thumbnail")
