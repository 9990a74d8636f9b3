"""The simulator's image rendering: milliseconds per render at the sizes its tests use.

    python benchmarks/imaging.py [N] [--json PATH]

Times N calls of `batch.sim.imaging.render` (after one warm-up call) for each output size and
format: 64x64 (what the benchmarks' jobs render: thousands of them), 512x384 and 1024x1024
(fal's `square_hd`), PNG and JPEG. Each edit has one input of the output's size, a noise image
(a photo-like load for the decoder and encoder, unlike a flat colour), and a different seed per
call. Renders run in this process, one at a time, as the simulator's worker thread runs them.

Printed for each case: wall ms per render, CPU ms per render (this process, user + system),
renders per second and the mean output size. The 64x64 PNG case measured about 1 ms; the
simulator's rate benchmarks assume it stays in the low milliseconds.
"""

from __future__ import annotations

import io
import time
from typing import Any

from common import arguments, cpu_seconds, machine, print_table, write_json
from PIL import Image

from batch.sim.imaging import render

SIZES = ((64, 64), (512, 384), (1024, 1024))
FORMATS = ("png", "jpeg")
PROMPT = "make it blue"


def input_image(size: tuple[int, int]) -> bytes:
    """A PNG of Gaussian noise around mid-grey, tinted: decodes like a busy photo would."""
    noise = Image.effect_noise(size, 40).convert("RGB")
    tinted = Image.blend(noise, Image.new("RGB", size, (60, 120, 200)), 0.3)
    buf = io.BytesIO()
    tinted.save(buf, "PNG")
    return buf.getvalue()


def measure(size: tuple[int, int], fmt: str, n: int) -> dict[str, Any]:
    """`n` renders of one case (seeds 0..n-1) after a warm-up; wall and CPU ms per render."""
    source = input_image(size)
    render([source], PROMPT, n, size, fmt, 0)  # warm-up: fonts, codecs
    out_bytes = 0
    cpu = cpu_seconds()
    started = time.perf_counter()
    for seed in range(n):
        data, width, height = render([source], PROMPT, seed, size, fmt, 0)
        out_bytes += len(data)
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    if (width, height) != size:
        raise RuntimeError(f"render gave {width}x{height}, not {size[0]}x{size[1]}")
    return {
        "size": f"{size[0]}x{size[1]}",
        "format": fmt,
        "n": n,
        "wall_s": wall,
        "ms_per_render": wall / n * 1000,
        "cpu_ms_per_render": cpu / n * 1000,
        "renders_per_s": n / wall,
        "output_kib": out_bytes / n / 1024,
    }


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], default_n=100)
    args = parser.parse_args()
    n = max(1, args.n)
    cases = [measure(size, fmt, n) for size in SIZES for fmt in FORMATS]
    figures: dict[str, Any] = {"n": n, "cases": cases, "machine": machine()}
    for case in cases:
        figures[f"{case['format']}_{case['size']}_ms_per_render"] = case["ms_per_render"]
    print_table(
        f"simulator render: {n} renders per case, one input of the output's size",
        ["size", "format", "ms/render", "CPU ms/render", "renders/s", "output KiB"],
        [
            [
                case["size"],
                case["format"],
                case["ms_per_render"],
                case["cpu_ms_per_render"],
                case["renders_per_s"],
                case["output_kib"],
            ]
            for case in cases
        ],
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
