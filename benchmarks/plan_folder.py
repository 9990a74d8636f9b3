"""Planning a folder of local images × prompts: time, peak memory, and reads per file.

    python benchmarks/plan_folder.py [N] [--prompts 3] [--size 64] [--json PATH]

Makes N distinct JPEGs (SIZE×SIZE) in a temporary folder, in a child process so that their
making does not count in this process's peak memory, and a one-line matrix manifest
(``images: [photos/]``) with the given number of prompts. Then, in this process:

- plan: `plan_run` on a fresh ledger — expand the folder, read, hash and decode every file,
  validate N × prompts items and insert them;
- replan: `plan_run` again, nothing changed (what every later run of the job does: the files
  are stat'ed, not read).

Every `open()` of a file in the folder is counted with an audit hook: the plan must read each
file exactly once, the replan none. The script exits 1 if not. Printed: wall time, items/s,
files read, the most reads of any one file, and the peak RSS of this process (and its RSS
before planning).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import arguments, machine, peak_rss_mib, print_table, write_json


def make_files(folder: Path, n: int, size: int) -> None:
    """N distinct JPEGs: a colour from the index and the index's bits as a stripe pattern."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", (size, size), (i * 7 % 256, i * 13 % 256, i * 29 % 256))
        draw = ImageDraw.Draw(image)
        for bit in range(16):
            if i >> bit & 1:
                draw.rectangle(
                    [bit * size // 16, 0, (bit + 1) * size // 16 - 1, size // 4], "white"
                )
        image.save(folder / f"photo_{i:05d}.jpg", "JPEG", quality=80)


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def main() -> int:
    parser = arguments(__doc__.splitlines()[0], 10_000)
    parser.add_argument("--prompts", type=int, default=3, help="prompts (default %(default)s)")
    parser.add_argument("--size", type=int, default=64, help="image side, px (default 64)")
    parser.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.make is not None:
        make_files(args.make, args.n, args.size)
        return 0
    with tempfile.TemporaryDirectory(prefix="plan-folder-") as tmp:
        root = Path(tmp)
        photos = root / "photos"
        started = time.perf_counter()
        command = [sys.executable, __file__, str(args.n), "--size", str(args.size)]
        subprocess.run([*command, "--make", str(photos)], check=True)
        made_s = time.perf_counter() - started
        figures = plan_twice(root, photos, args.n, args.prompts)
    figures.update({"files": args.n, "prompts": args.prompts, "size": args.size})
    figures.update({"make_files_s": made_s, "machine": machine()})
    print_table(
        f"plan: {args.n:,} local files × {args.prompts} prompts "
        f"({figures['items']:,} items; files made in {made_s:.1f} s, not counted)",
        ["phase", "wall s", "items/s", "files read", "max reads/file"],
        [
            ["plan", figures["plan_s"], figures["items"] / figures["plan_s"],
             figures["plan_reads"], figures["plan_max_reads"]],
            ["replan", figures["replan_s"], figures["items"] / figures["replan_s"],
             figures["replan_reads"], figures["replan_max_reads"]],
        ],
    )  # fmt: skip
    print(
        f"peak RSS {figures['peak_rss_mib']:.0f} MiB "
        f"(before planning {figures['rss_before_mib']:.0f} MiB)"
    )
    write_json(args.json, figures)
    ok = figures["plan_reads"] == args.n and figures["plan_max_reads"] == 1
    ok = ok and figures["replan_reads"] == 0
    if not ok:
        print("FAIL: a file was read more than once (or not at all)", file=sys.stderr)
    return 0 if ok else 1


def plan_twice(root: Path, photos: Path, n: int, prompts: int) -> dict[str, Any]:
    from batch.job import JobSpec
    from batch.ledger import Ledger
    from batch.pipeline.planning import plan_run

    manifest = root / "m.yaml"
    names = ", ".join(f"p{i}" for i in range(prompts))
    manifest.write_text(f"matrix:\n  prompts: [{names}]\n  images: [photos/]\n")
    spec = JobSpec.for_manifest(manifest, queue="local", output=root / "out")
    opened: Counter[str] = Counter()
    prefix = str(photos) + "/"

    def hook(event: str, hook_args: tuple[Any, ...]) -> None:
        if event == "open" and isinstance(hook_args[0], str) and hook_args[0].startswith(prefix):
            opened[hook_args[0]] += 1

    sys.addaudithook(hook)
    figures: dict[str, Any] = {"rss_before_mib": rss_mib()}
    with Ledger.open(spec.output) as ledger:
        for phase in ("plan", "replan"):
            opened.clear()
            started = time.perf_counter()
            planned = plan_run(spec, ledger)
            figures[f"{phase}_s"] = time.perf_counter() - started
            figures[f"{phase}_reads"] = len(opened)
            figures[f"{phase}_max_reads"] = max(opened.values(), default=0)
            figures["items"] = planned.counts["new"] + planned.counts["resume"]
            figures["items"] += planned.counts["completed"]
    figures["peak_rss_mib"] = peak_rss_mib()
    return figures


if __name__ == "__main__":
    sys.exit(main())
