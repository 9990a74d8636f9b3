"""Cost: prices and budgets in job files, and the estimate `validate` and `run --dry-run` print."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from support import png_uri, write_csv

from batch.cli import main
from batch.job import JobError, load_job
from batch.manifest.pricing import Estimate, PriceSpec, output_basis, usd

ROWS = [
    # 2 outputs of 1000×1000: 2 MP
    {"id": "sized", "prompt": "a", "image_urls": ["https://example.com/a.png"],
     "image_size": "1000x1000", "num_images": 2},
    # output at the inline input's size, 400×250: 0.1 MP
    {"id": "inline", "prompt": "b", "image_urls": [png_uri(400, 250)]},
    # output at a remote input's size: unknown before the run
    {"id": "remote", "prompt": "c", "image_urls": ["https://example.com/c.png"]},
]  # fmt: skip


def _job(tmp: Path, extra: str = "") -> Path:
    write_csv(tmp / "m.csv", ROWS)
    job = tmp / "job.yaml"
    job.write_text(f"manifest: m.csv\nqueue: local\noutput: {tmp / 'out'}\n{extra}", "utf-8")
    return job


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_validate_prints_requests_images_megapixels_and_cost_per_megapixel(tmp_path):
    code, out = _cli("validate", str(_job(tmp_path, "price: {per_megapixel: 0.5}\n")))
    assert code == 0, out
    assert out.splitlines()[-1] == (
        "estimate: 3 requests, 4 output images, 2.1 MP + 1 item of unknown size"
        " → at least $1.05 at $0.50/MP (estimate)"
    )


def test_validate_prints_cost_per_image_which_needs_no_sizes(tmp_path):
    code, out = _cli("validate", str(_job(tmp_path, "price: {per_image: 0.04}\n")))
    assert code == 0, out
    assert out.splitlines()[-1] == (
        "estimate: 3 requests, 4 output images, 2.1 MP + 1 item of unknown size"
        " → $0.16 at $0.04/image (estimate)"
    )


def test_validate_without_a_price_says_how_to_give_one(tmp_path):
    code, out = _cli("validate", str(_job(tmp_path)))
    assert code == 0, out
    assert out.splitlines()[-1] == (
        "estimate: 3 requests, 4 output images, 2.1 MP + 1 item of unknown size"
        " (cost: set price: {per_megapixel: …} or {per_image: …})"
    )


def test_dry_run_prints_what_it_would_send_and_whether_the_budget_is_enough(tmp_path):
    job = _job(tmp_path, "price: {per_image: 0.04}\nbudget: {max_usd: 0.1}\n")
    code, out = _cli("run", str(job), "--dry-run")
    assert code == 0, out
    assert "dry run: nothing sent" in out
    assert "  to send: 3 requests, 4 output images, 2.1 MP + 1 item of unknown size" in out
    assert "$0.16 at $0.04/image (estimate)" in out
    assert "  spent: $0.00 (estimate at $0.04/image); budget $0.10: $0.06 short" in out


def test_local_input_sizes_come_from_the_files(tmp_path):
    from PIL import Image

    Image.new("RGB", (800, 500)).save(tmp_path / "p.png")
    (tmp_path / "m.csv").write_text("id,prompt,image_urls\nx,a,p.png\n", encoding="utf-8")
    code, out = _cli("validate", str(tmp_path / "m.csv"))
    assert code == 0, out
    assert "estimate: 1 request, 1 output image, 0.4 MP (cost:" in out


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ("price: {per_megapixel: 0.1, per_image: 0.2}\n", "price: give exactly one of"),
        ("price: {}\n", "price: give exactly one of"),
        ("price: {per_image: -1}\n", "price.per_image: Input should be greater than or equal"),
        ("price: {per_image: 1, currency: eur}\n", "price.currency: unknown field"),
        (
            "price: {per_image: 1}\nbudget: {max_usd: 0}\n",
            "budget.max_usd: Input should be greater",
        ),
    ],
)
def test_bad_price_or_budget_is_reported_with_its_line(tmp_path, settings, error):
    job = _job(tmp_path, settings)
    with pytest.raises(JobError) as caught:
        load_job(job)
    [message] = caught.value.errors
    line = 3 + settings.count("\n")  # the last setting's line (after manifest, queue, output)
    assert f"job.yaml:{line}: {error}" in message


def test_estimate_arithmetic():
    price = PriceSpec(per_megapixel=0.03)
    estimate = Estimate()
    estimate.add(*output_basis({"image_size": "square_hd", "num_images": 2}))
    estimate.add(*output_basis({"image_size": {"width": 500, "height": 400}}))
    estimate.add(*output_basis({"image_urls": ["local:sha256:" + "a" * 64]}, lambda sha: (10, 10)))
    assert (estimate.requests, estimate.output_images, estimate.unknown_items) == (3, 4, 0)
    assert estimate.pixels == 2 * 1024 * 1024 + 500 * 400 + 100
    assert estimate.cost(price) == pytest.approx(estimate.pixels / 1e6 * 0.03)
    assert PriceSpec(per_image=0.05).cost(4, 10**9) == pytest.approx(0.2)
    assert [usd(0), usd(0.5), usd(1234.5), usd(0.0125), usd(0.000192)] == [
        "$0.00",
        "$0.50",
        "$1,234.50",
        "$0.01",
        "$0.000192",
    ]
