"""What the benchmark scripts share: the simulator in its own process, counters, figures.

The simulator runs as a separate process (`firered-batch sim`), so its CPU time is not charged
to the client being measured; it is always terminated when the `SimProcess` block ends. Inputs
are tiny data-URI PNGs and outputs are 32x32, so the simulator's rendering costs next to nothing.
Figures are printed as a table and, with `--json PATH`, written as JSON.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from PIL import Image

ENDPOINT = "fal-ai/firered-image-edit"
IMAGE_SIZE = {"width": 32, "height": 32}
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
START_ATTEMPTS = 3


def png_data_uri(
    width: int = 8, height: int = 8, color: tuple[int, int, int] = (40, 90, 200)
) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def payload(index: int, image: str) -> dict[str, Any]:
    """The request of item `index`: a distinct prompt, one tiny input, a 32x32 output."""
    return {"prompt": f"bench item {index}", "image_urls": [image], "image_size": IMAGE_SIZE}


def write_manifest(path: Path, n: int) -> Path:
    """A CSV manifest of the requests `payload(0..n-1)` (the raw loops' requests exactly)."""
    image = png_data_uri()
    size = f"{IMAGE_SIZE['width']}x{IMAGE_SIZE['height']}"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt", "image_urls", "image_size"])
        for i in range(n):
            writer.writerow([f"item{i}", payload(i, image)["prompt"], image, size])
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class SimProcess:
    """`firered-batch sim` in a child process on a free port, with a known key.

    with SimProcess(capacity=200) as sim:
        sim.url, sim.key, sim.counters()
    """

    def __init__(
        self, *, capacity: int, latency: str = "fixed:0", extra: tuple[str, ...] = ()
    ) -> None:
        self.capacity = capacity
        self.latency = latency
        self.extra = extra  # more `firered-batch sim` options, e.g. ("--seed", "3")
        self.key = "bench-" + secrets.token_hex(8)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())

    def __repr__(self) -> str:
        return f"SimProcess(url={self.url!r}, capacity={self.capacity}, latency={self.latency})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "batch",  # the `firered-batch` command
            "sim",
            "--port",
            str(self.port),
            "--capacity",
            str(self.capacity),
            "--latency",
            self.latency,
            "--key",
            self.key,
            *self.extra,
        ]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the simulator exited with {self.proc.returncode}: {self.log()}"
                )
            try:
                get_json(f"{self.url}/_sim/counters", timeout=1.0)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the simulator did not answer within {START_TIMEOUT_S:g} s")

    def stop(self) -> None:
        self._terminate()
        self._log.close()

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def counters(self) -> dict[str, Any]:
        counters: dict[str, Any] = get_json(f"{self.url}/_sim/counters")
        return counters

    def jobs(self) -> list[dict[str, Any]]:
        """Every job's record: submitted_at, started_at, completed_at, service_time, ..."""
        jobs: list[dict[str, Any]] = get_json(f"{self.url}/_sim/jobs")["jobs"]
        return jobs

    def requests(self, route: str) -> int:
        """Requests the simulator has seen on `route` (submit, status, result, files, ...)."""
        return int(self.counters()["requests"].get(route, 0))

    def __enter__(self) -> SimProcess:
        for attempt in range(START_ATTEMPTS):
            try:
                self.start()
                return self
            except RuntimeError:
                self._terminate()  # e.g. the free port was taken meanwhile: try another
                if attempt == START_ATTEMPTS - 1:
                    self._log.close()
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark dies, even by SIGKILL."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind (SystemExit) so `with SimProcess(...)` blocks stop their simulator."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def history_calls(counters: dict[str, Any]) -> int:
    """Calls of fal's request history (`/v1/models/requests/by-endpoint`) the simulator saw."""
    return int(counters.get("requests", {}).get("history", 0))


def peak_rss_mib(*, children: bool = False) -> float:
    """Peak resident set size in MiB: this process's, or the largest waited-for child's."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    kib = resource.getrusage(who).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


def cpu_seconds(*, children: bool = False) -> float:
    """User + system CPU seconds of this process (all threads), or of its waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def kernel_seconds() -> float:
    """The kernel's part of this process's `cpu_seconds` (system CPU seconds)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def arguments(description: str, default_n: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "n", nargs="?", type=int, default=default_n, help="how many (default %(default)s)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    return parser


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table; numbers right-aligned, floats with 2 decimals (or 0 if big)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    table = [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(out).rstrip()

    print(title)
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in table:
        print(line(row))
    print()


def write_json(path: Path | None, figures: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "cpus": os.cpu_count(), "platform": sys.platform}


# --- what the simulator's job records (`SimProcess.jobs()`) tell -------------------------------


def done_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs that completed without an error."""
    return [job for job in jobs if job.get("completed_at") and not job.get("error_type")]


def submit_span(jobs: list[dict[str, Any]]) -> float:
    """Seconds from the first accepted submit to the last (each record is an accepted submit)."""
    submitted = [float(job["submitted_at"]) for job in jobs]
    return max(submitted) - min(submitted) if submitted else 0.0


def submitted_before_first_completion(jobs: list[dict[str, Any]]) -> int:
    """How many submits the simulator had accepted when the first job completed."""
    done = done_jobs(jobs)
    if not done:
        return len(jobs)
    first = min(float(job["completed_at"]) for job in done)
    return sum(1 for job in jobs if float(job["submitted_at"]) <= first)


def refill_gaps(jobs: list[dict[str, Any]], slots: int) -> list[float]:
    """Seconds from each completion to the submit that refills its slot.

    With at most `slots` requests at the server, the (slots + k)-th submit (in time order) can
    only follow the k-th completion: the gap between the two is the time that slot stood idle
    while there was more work. A negative gap means the client had more than `slots` requests
    at the server (the extra waited in its queue)."""
    submitted = sorted(float(job["submitted_at"]) for job in jobs)
    completed = sorted(float(job["completed_at"]) for job in done_jobs(jobs))
    pairs = min(len(completed), len(submitted) - slots)
    return [submitted[slots + k] - completed[k] for k in range(max(0, pairs))]


def peak_at_server(jobs: list[dict[str, Any]]) -> int:
    """The most requests the simulator held at once (queued or running), from submit to end."""
    events: list[tuple[float, int]] = []
    for job in jobs:
        events.append((float(job["submitted_at"]), 1))
        if job.get("completed_at"):
            events.append((float(job["completed_at"]), -1))
    peak = held = 0
    for _, change in sorted(events):  # at a tie an end (-1) sorts before a submit (+1)
        held += change
        peak = max(peak, held)
    return peak


def quantile(values: list[float], q: float) -> float | None:
    """The `q` quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def run_ours(sim: SimProcess, manifest: Path, output: Path, **settings: Any) -> int:
    """Our runner on `manifest` against `sim`, as the CLI runs it; its exit code (0, or raises).

    `settings` are `JobSpec` fields (concurrency, rate, wait, queue_ahead, ...)."""
    from batch import JobSpec, run_job
    from batch.cli.collector import fewer_collections
    from batch.fal import Credentials

    spec = JobSpec.for_manifest(manifest, queue=sim.url, output=output, **settings)
    with fewer_collections():
        summary = await run_job(spec, credentials=Credentials(sim.key))
    if summary.exit_code != 0:
        raise RuntimeError(summary.text())
    return int(summary.exit_code)
